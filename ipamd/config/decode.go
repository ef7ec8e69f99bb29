package config

import (
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
)

// decodeStrict decodes data into the struct that v points to, field by field,
// so that every error names the JSON path of its field: unknown names (matched
// exactly, not case-insensitively as encoding/json does), nulls, and values of
// the wrong type. It returns the set of paths the document sets, which is nil
// only when data is not JSON; fields with errors keep their previous values.
func decodeStrict(data []byte, v any) (map[string]bool, error) {
	var raw json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	seen := map[string]bool{}
	return seen, decodeObject("", raw, reflect.ValueOf(v).Elem(), seen)
}

var (
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
	addrPortType    = reflect.TypeFor[netip.AddrPort]()
)

func decodeObject(path string, raw json.RawMessage, v reflect.Value, seen map[string]bool) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return fieldErr(orRoot(path), "must be an object")
	}
	byName := map[string]int{}
	t := v.Type()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		byName[name] = i
	}
	var errs []error
	for _, key := range slices.Sorted(mapsKeys(fields)) {
		p := join(path, key)
		i, ok := byName[key]
		if !ok {
			errs = append(errs, fieldErr(p, "unknown field"))
			continue
		}
		val := fields[key]
		if string(val) == "null" {
			errs = append(errs, fieldErr(p, "null is not allowed; omit the field to keep its default"))
			continue
		}
		seen[p] = true
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && !reflect.PointerTo(fv.Type()).Implements(textUnmarshaler) {
			if err := decodeObject(p, val, fv, seen); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		// Decode into a fresh value: a failed decode must leave the
		// default in place (netip.AddrPort zeroes itself on error).
		nv := reflect.New(fv.Type())
		if err := json.Unmarshal(val, nv.Interface()); err != nil {
			errs = append(errs, decodeErr(p, fv.Type(), val, err))
			continue
		}
		fv.Set(nv.Elem())
	}
	return errors.Join(errs...)
}

func decodeErr(path string, t reflect.Type, val json.RawMessage, err error) error {
	var te *json.UnmarshalTypeError
	switch {
	case t == addrPortType:
		return fieldErr(path, fmt.Sprintf("%s is not an ip:port such as %q", val, DefaultMetricsAddr))
	case errors.As(err, &te) && t.Kind() == reflect.String:
		return fieldErr(path, fmt.Sprintf("%s is not a string", val))
	case errors.As(err, &te) && t.Kind() == reflect.Int:
		return fieldErr(path, fmt.Sprintf("%s is not an integer", val))
	case errors.As(err, &te) && t == reflect.TypeFor[Duration]():
		return fieldErr(path, fmt.Sprintf("%s is not a duration string such as \"30s\"", val))
	}
	return fieldErr(path, err.Error())
}

func mapsKeys(m map[string]json.RawMessage) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func join(path, key string) string {
	if key == "" {
		key = `""` // an empty name must still be visible in the message
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func orRoot(path string) string {
	if path == "" {
		return "(document)"
	}
	return path
}
