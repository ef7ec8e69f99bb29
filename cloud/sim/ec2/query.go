package ec2

import (
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// params is a request's form, with the EC2 query protocol's list encoding
// (Name.1, Name.2, ...; members as Name.1.Member).
type params url.Values

func (p params) get(name string) string { return url.Values(p).Get(name) }

func (p params) has(name string) bool { _, ok := p[name]; return ok }

// list returns the values of name.1, name.2, ... in index order.
func (p params) list(name string) []string {
	var out []string
	for _, m := range p.indexed(name) {
		if v, ok := m.p[""]; ok && len(v) > 0 {
			out = append(out, v[0])
		}
	}
	return out
}

// members returns the structures name.N.* as params without the prefix,
// in index order.
func (p params) members(name string) []params {
	var out []params
	for _, m := range p.indexed(name) {
		out = append(out, m.p)
	}
	return out
}

type indexedMember struct {
	i int
	p params
}

func (p params) indexed(name string) []indexedMember {
	byIndex := map[int]params{}
	prefix := name + "."
	for k, v := range p {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		idx, sub, _ := strings.Cut(rest, ".")
		i, err := strconv.Atoi(idx)
		if err != nil || i < 1 {
			continue
		}
		if byIndex[i] == nil {
			byIndex[i] = params{}
		}
		byIndex[i][sub] = v
	}
	out := make([]indexedMember, 0, len(byIndex))
	for i, m := range byIndex {
		out = append(out, indexedMember{i, m})
	}
	slices.SortFunc(out, func(a, b indexedMember) int { return a.i - b.i })
	return out
}

// boolean parses a boolean parameter; ok is false when it is not a boolean.
func (p params) boolean(name string) (v, set, ok bool) {
	s := p.get(name)
	if s == "" {
		return false, false, true
	}
	b, err := strconv.ParseBool(s)
	return b, true, err == nil
}

// filter is one Filter.N of a Describe request.
type filter struct {
	name   string
	values []*regexp.Regexp
}

// parseFilters reads Filter.N.Name and Filter.N.Value.M.
func parseFilters(p params) ([]filter, *apiError) {
	var out []filter
	for _, m := range p.members("Filter") {
		name := m.get("Name")
		if name == "" {
			return nil, errMissing("Filter.Name")
		}
		f := filter{name: name}
		for _, v := range m.list("Value") {
			f.values = append(f.values, glob(v))
		}
		out = append(out, f)
	}
	return out, nil
}

// glob compiles an EC2 filter value, where * and ? are wildcards.
func glob(v string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for _, r := range v {
		switch r {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// fielder answers the values of a filter name for one resource; ok false
// when the name is not a filter of that resource type.
type fielder func(name string) (values []string, ok bool)

// matchFilters reports whether a resource passes every filter; an unknown
// filter name is an error.
func matchFilters(fs []filter, field fielder) (bool, *apiError) {
	for _, f := range fs {
		have, ok := field(f.name)
		if !ok {
			return false, errInvalidValue("The filter '%s' is invalid", f.name)
		}
		if !anyMatch(f.values, have) {
			return false, nil
		}
	}
	return true, nil
}

func anyMatch(res []*regexp.Regexp, have []string) bool {
	for _, re := range res {
		for _, h := range have {
			if re.MatchString(h) {
				return true
			}
		}
	}
	return false
}

// tagField answers tag:<key> and tag-key filters from tags.
func tagField(name string, tags map[string]string) ([]string, bool) {
	if k, ok := strings.CutPrefix(name, "tag:"); ok {
		if v, ok := tags[k]; ok {
			return []string{v}, true
		}
		return nil, true
	}
	if name == "tag-key" {
		keys := make([]string, 0, len(tags))
		for k := range tags {
			keys = append(keys, k)
		}
		return keys, true
	}
	return nil, false
}

// page applies MaxResults and NextToken (an offset) to n items: it returns
// the range and the next token ("" at the end).
func page(p params, n int) (from, to int, next string, err *apiError) {
	if t := p.get("NextToken"); t != "" {
		v, convErr := strconv.Atoi(t)
		if convErr != nil || v < 0 || v > n {
			return 0, 0, "", errInvalidValue("The token '%s' is invalid", t)
		}
		from = v
	}
	to = n
	if s := p.get("MaxResults"); s != "" {
		m, convErr := strconv.Atoi(s)
		if convErr != nil || m < 5 || m > 1000 {
			return 0, 0, "", errInvalidValue("Value ( %s ) for parameter maxResults is invalid. Expecting a value between 5 and 1000.", s)
		}
		if from+m < n {
			to = from + m
			next = strconv.Itoa(to)
		}
	}
	return from, to, next, nil
}
