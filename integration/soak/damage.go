package soak

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// Damage is a kind of store damage the killer inflicts while a node's
// daemon is down after its SIGKILL.
type Damage int

const (
	// DamageTruncate cuts the journal inside one of its records (chosen at
	// random), losing that record and every one after it.
	DamageTruncate Damage = iota
	// DamageZero overwrites the whole journal with zeros, keeping its size.
	DamageZero
	// DamageDelete removes every file of the store directory (snapshot,
	// journal, lock and whatever else is there), as a missing hostPath
	// leaves it.
	DamageDelete
	numDamages
)

func (d Damage) String() string {
	switch d {
	case DamageTruncate:
		return "truncate"
	case DamageZero:
		return "zero"
	case DamageDelete:
		return "delete"
	}
	return fmt.Sprintf("damage(%d)", int(d))
}

// Damages counts the store damage the soak inflicted, by kind.
type Damages struct {
	Truncated, Zeroed, Deleted int
}

// Total is the number of damaged stores.
func (d Damages) Total() int { return d.Truncated + d.Zeroed + d.Deleted }

// The journal's framing, as ipamd/store writes it (see its journal.go):
// every record is a 12-byte header, magic [4]byte | payload length uint32
// LE | CRC-32C uint32 LE, then the payload; zeros follow the last record.
// The soak reads it on its own, so that a change of the format shows here
// as a failure to damage rather than as damage that misses.
const (
	journalFile  = "journal"
	recordHeader = 12
)

var recordMagic = [4]byte{0x00, 'v', 'n', 'j'}

// records returns the offset and the length (header included) of every
// complete record at the start of a journal.
func records(data []byte) (offs, lens []int) {
	for off := 0; off+recordHeader <= len(data); {
		if [4]byte(data[off:off+4]) != recordMagic {
			break
		}
		n := recordHeader + int(binary.LittleEndian.Uint32(data[off+4:off+8]))
		if n <= recordHeader || off+n > len(data) {
			break
		}
		offs, lens = append(offs, off), append(lens, n)
		off += n
	}
	return offs, lens
}

// damageStore inflicts kind on the store in dir, whose daemon is not
// running. It returns the kind actually inflicted and what it did: a
// journal without a record cannot be cut inside one, so it is zeroed.
func damageStore(dir string, kind Damage, rng *rand.Rand) (Damage, string, error) {
	path := filepath.Join(dir, journalFile)
	switch kind {
	case DamageTruncate:
		data, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return kind, "", err
		}
		offs, lens := records(data)
		if len(offs) == 0 {
			return damageStore(dir, DamageZero, rng)
		}
		i := rng.IntN(len(offs))
		at := offs[i] + 1 + rng.IntN(lens[i]-1)
		if err := os.Truncate(path, int64(at)); err != nil {
			return kind, "", err
		}
		return kind, fmt.Sprintf("journal of %d bytes cut at %d, inside record %d of %d", len(data), at, i+1, len(offs)), nil
	case DamageZero:
		st, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) {
			return kind, "no journal to zero", nil
		}
		if err != nil {
			return kind, "", err
		}
		if err := os.WriteFile(path, make([]byte, st.Size()), 0o600); err != nil {
			return kind, "", err
		}
		return kind, fmt.Sprintf("journal of %d bytes zeroed", st.Size()), nil
	case DamageDelete:
		entries, err := os.ReadDir(dir)
		if err != nil {
			return kind, "", err
		}
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return kind, "", err
			}
		}
		return kind, fmt.Sprintf("%d files deleted", len(entries)), nil
	}
	return kind, "", fmt.Errorf("unknown damage %d", kind)
}
