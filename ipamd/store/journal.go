package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

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
// to tell a torn tail (nothing intact follows the damage) from damage in the
// middle of the journal (acknowledged records follow it).
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

// loadSnapshot reads the snapshot file; a missing file is an empty snapshot.
func loadSnapshot(path string) (snapshotFile, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return snapshotFile{Version: snapshotVersion}, nil
	}
	if err != nil {
		return snapshotFile{}, fmt.Errorf("read snapshot: %w", err)
	}
	payload, n, err := readFrame(b)
	if err != nil || n != len(b) {
		// The snapshot is written to a temporary file and renamed only after
		// fsync, so damage here is not a crash artefact.
		return snapshotFile{}, fmt.Errorf("snapshot %s: %w", path, ErrCorrupt)
	}
	var snap snapshotFile
	if err := json.Unmarshal(payload, &snap); err != nil {
		return snapshotFile{}, fmt.Errorf("snapshot %s: decode: %w: %w", path, ErrCorrupt, err)
	}
	if snap.Version != snapshotVersion {
		return snapshotFile{}, fmt.Errorf("snapshot %s: version %d, want %d: %w", path, snap.Version, snapshotVersion, ErrCorrupt)
	}
	return snap, nil
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
