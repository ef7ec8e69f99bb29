package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// On-disk layout of a store directory (mode 0700, files 0600):
//
//	lock      flock(2)ed by the process that has the store open
//	snapshot  one frame: the whole state up to snapshotFile.Seq (absent before
//	          the first compaction); replaced atomically (internal/atomicfile)
//	journal   frames written since the snapshot, one per change, followed by
//	          zeros: the file is zero-filled ahead of the records in chunks,
//	          so that a record's fdatasync does not change the file's size
//
// A frame is a 12-byte header followed by a JSON payload:
//
//	magic [4]byte | payload length uint32 LE | CRC-32C of the payload uint32 LE
//
// A journal entry holds the absolute result of one change (full records to put,
// addresses to delete, the new metadata), never the operation to redo, so replay
// needs none of the store's rules and a replayed entry is applied atomically.
const (
	lockName     = "lock"
	snapshotName = "snapshot"
	journalName  = "journal"
	tmpSuffix    = ".tmp"

	headerSize = 12
	// maxPayload bounds a frame; a length above it is garbage.
	maxPayload = 16 << 20

	snapshotVersion = 1

	fileMode = 0o600
	dirMode  = 0o700
)

// frameMagic starts every frame. It holds a NUL byte, which JSON text never
// contains, so a payload can never be mistaken for the start of a frame.
var frameMagic = [4]byte{0x00, 'v', 'n', 'j'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// entry is one journal record.
type entry struct {
	Seq uint64 `json:"seq"`
	// Op names the operation, for people reading the journal.
	Op   string       `json:"op"`
	Put  []Record     `json:"put,omitempty"`
	Del  []netip.Addr `json:"del,omitempty"`
	Meta *storeMeta   `json:"meta,omitempty"`
}

// snapshotFile is the content of the snapshot frame.
type snapshotFile struct {
	Version int       `json:"version"`
	Seq     uint64    `json:"seq"`
	Meta    storeMeta `json:"meta"`
	Records []Record  `json:"records"`
}

func appendFrame(dst, payload []byte) []byte {
	dst = append(dst, frameMagic[:]...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	dst = binary.LittleEndian.AppendUint32(dst, crc32.Checksum(payload, castagnoli))
	return append(dst, payload...)
}

// errTorn means that the bytes at the offset do not hold a complete, intact frame.
var errTorn = errors.New("incomplete or damaged frame")

// readFrame decodes the frame at the start of b and returns its payload and
// its total size.
func readFrame(b []byte) ([]byte, int, error) {
	if len(b) < headerSize || !bytes.Equal(b[:4], frameMagic[:]) {
		return nil, 0, errTorn
	}
	n := binary.LittleEndian.Uint32(b[4:8])
	if n == 0 || n > maxPayload || uint64(len(b)-headerSize) < uint64(n) {
		return nil, 0, errTorn
	}
	payload := b[headerSize : headerSize+int(n)]
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(b[8:12]) {
		return nil, 0, errTorn
	}
	return payload, headerSize + int(n), nil
}

// intactFrameAfter reports whether any intact frame starts in b. Open uses it
// to say whether damage is in the middle of the journal (acknowledged
// records follow it) or at its end.
func intactFrameAfter(b []byte) bool {
	for i := 0; i < len(b); {
		j := bytes.Index(b[i:], frameMagic[:])
		if j < 0 {
			return false
		}
		if _, _, err := readFrame(b[i+j:]); err == nil {
			return true
		}
		i += j + 1
	}
	return false
}

// tailDamage checks what follows the last intact record of a journal (at
// off in data) and returns the size of a torn record to clear, or an error
// wrapping ErrCorrupt when the bytes there are damage.
//
// Only two kinds of write ever touch the journal: zero fill ahead of the
// records, a whole chunk at a time, and one record at a time over that
// fill. So a crash can leave exactly two things after the last intact
// record: zeros, and before them at most one record cut while it was
// written (see tornFrame). Everything else was done to the file after it
// was written: a complete record with a wrong checksum (a flipped byte),
// a file that ends inside a record or right after one without its zero
// fill (a truncation), a zero-filled file larger than one chunk with no
// record (zeroed: a journal grows past its first chunk only by records),
// or bytes that are no record at all.
func tailDamage(data []byte, off int) (int, error) {
	rest := data[off:]
	nz := len(bytes.TrimRight(rest, "\x00"))
	switch {
	case nz == 0 && off > 0 && len(rest) == 0 && len(data)%journalChunk != 0:
		return 0, fmt.Errorf("journal truncated: it ends right after the record at offset %d, without the zero fill that follows the records: %w",
			off, ErrCorrupt)
	case nz == 0 && off == 0 && len(data) > journalChunk:
		return 0, fmt.Errorf("journal of %d bytes holds only zeros, more than the %d of a journal without records: %w",
			len(data), journalChunk, ErrCorrupt)
	case nz == 0:
		return 0, nil
	case tornFrame(rest, nz):
		return nz, nil
	case intactFrameAfter(rest[1:]):
		return 0, fmt.Errorf("journal damaged at offset %d with intact records after it: %w", off, ErrCorrupt)
	case cutShort(rest):
		return 0, fmt.Errorf("journal truncated inside the record at offset %d: %w", off, ErrCorrupt)
	case wholeFrame(rest):
		return 0, fmt.Errorf("journal record at offset %d is complete but fails its checksum: changed after it was written: %w", off, ErrCorrupt)
	default:
		return 0, fmt.Errorf("journal damaged at offset %d: %d bytes that are neither a record nor one a crash cut: %w", off, nz, ErrCorrupt)
	}
}

// frameLength returns the payload length in the frame header at the start of
// rest, and false when rest does not start with a frame header whose length
// is possible.
func frameLength(rest []byte) (int, bool) {
	if len(rest) < 8 || !bytes.Equal(rest[:len(frameMagic)], frameMagic[:]) {
		return 0, false
	}
	n := binary.LittleEndian.Uint32(rest[4:8])
	return int(n), n > 0 && n <= maxPayload
}

// cutShort reports whether rest starts like a frame and the file ends before
// the frame does.
func cutShort(rest []byte) bool {
	if m := min(len(rest), len(frameMagic)); !bytes.Equal(rest[:m], frameMagic[:m]) {
		return false
	}
	if len(rest) < headerSize {
		return true
	}
	n, ok := frameLength(rest)
	return ok && headerSize+n > len(rest)
}

// wholeFrame reports whether rest starts with a frame header and holds
// every byte of the frame, non-zero to its end.
func wholeFrame(rest []byte) bool {
	n, ok := frameLength(rest)
	return ok && headerSize+n <= len(rest) && rest[headerSize+n-1] != 0
}

// tornFrame reports whether rest, non-zero up to nz and zero after it, is a
// record that a crash cut while writing it: the first nz bytes of a frame,
// and zeros where the zero fill was not overwritten yet. The fill covers a
// record before it is written, so the file holds the frame's whole length;
// a JSON payload holds no zero byte, and a complete one is never a prefix
// of a longer one. A frame whose bytes are all there is not torn, whatever
// its checksum says.
func tornFrame(rest []byte, nz int) bool {
	if len(rest) < headerSize {
		return false
	}
	if nz <= len(frameMagic) {
		return bytes.Equal(rest[:nz], frameMagic[:nz])
	}
	if !bytes.Equal(rest[:len(frameMagic)], frameMagic[:]) {
		return false
	}
	if nz <= 8 {
		// The length itself was cut.
		return true
	}
	n := int(binary.LittleEndian.Uint32(rest[4:8]))
	end := headerSize + n
	if n == 0 || n > maxPayload || end > len(rest) || nz >= end {
		return false
	}
	if nz > headerSize {
		written := rest[headerSize:nz]
		if bytes.IndexByte(written, 0) >= 0 || json.Valid(written) {
			return false
		}
	}
	return true
}

// loadSnapshot reads the snapshot file; a missing file is an empty snapshot
// and exists is false.
func loadSnapshot(path string) (snap snapshotFile, exists bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return snapshotFile{Version: snapshotVersion}, false, nil
	}
	if err != nil {
		return snapshotFile{}, true, fmt.Errorf("read snapshot: %w", err)
	}
	payload, n, err := readFrame(b)
	if err != nil || n != len(b) {
		// The snapshot is written to a temporary file and renamed only after
		// fsync, so damage here is not a crash artefact.
		return snapshotFile{}, true, fmt.Errorf("snapshot %s: %w", path, ErrCorrupt)
	}
	if err := json.Unmarshal(payload, &snap); err != nil {
		return snapshotFile{}, true, fmt.Errorf("snapshot %s: decode: %w: %w", path, ErrCorrupt, err)
	}
	if snap.Version != snapshotVersion {
		return snapshotFile{}, true, fmt.Errorf("snapshot %s: version %d, want %d: %w", path, snap.Version, snapshotVersion, ErrCorrupt)
	}
	return snap, true, nil
}

// damagedSuffix is inserted between a damaged file's name and the time it
// was moved aside.
const damagedSuffix = ".damaged-"

// keepDamaged is how many sets of damaged files a store directory keeps.
const keepDamaged = 3

// moveAside renames the store's files in dir that exist (the journal and
// the snapshot) to name.damaged-stamp, removes all but the keepDamaged
// newest sets of damaged files, and returns the new paths.
func moveAside(dir, stamp string) ([]string, error) {
	var moved []string
	for _, name := range []string{snapshotName, journalName} {
		p := filepath.Join(dir, name)
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		aside := p + damagedSuffix + stamp
		if err := os.Rename(p, aside); err != nil {
			return moved, fmt.Errorf("move damaged %s aside: %w", name, err)
		}
		moved = append(moved, aside)
	}
	old, err := filepath.Glob(filepath.Join(dir, "*"+damagedSuffix+"*"))
	if err != nil {
		return moved, err
	}
	stamps := map[string]bool{}
	for _, p := range old {
		_, st, _ := strings.Cut(filepath.Base(p), damagedSuffix)
		stamps[st] = true
	}
	sorted := slices.Sorted(maps.Keys(stamps))
	for _, st := range sorted[:max(len(sorted)-keepDamaged, 0)] {
		for _, p := range old {
			if strings.HasSuffix(p, damagedSuffix+st) {
				if err := os.Remove(p); err != nil {
					return moved, fmt.Errorf("remove old damaged file: %w", err)
				}
			}
		}
	}
	return moved, syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

func fdatasync(f *os.File) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		for {
			serr = unix.Fdatasync(int(fd))
			if !errors.Is(serr, unix.EINTR) {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}

// lockDir takes the store's lock file with a non-blocking exclusive flock.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, fileMode)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, errors.Join(err, f.Close())
	}
	var lerr error
	if err := raw.Control(func(fd uintptr) {
		for {
			lerr = unix.Flock(int(fd), unix.LOCK_EX|unix.LOCK_NB)
			if !errors.Is(lerr, unix.EINTR) {
				return
			}
		}
	}); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	if errors.Is(lerr, unix.EWOULDBLOCK) {
		return nil, errors.Join(fmt.Errorf("%s: %w", dir, ErrLocked), f.Close())
	}
	if lerr != nil {
		return nil, errors.Join(fmt.Errorf("flock %s: %w", f.Name(), lerr), f.Close())
	}
	return f, nil
}
