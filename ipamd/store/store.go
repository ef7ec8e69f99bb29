// Package store persists the address pool of vnet-ipamd: every secondary address
// of the node's NIC, its state (free, assigned, cooling, releasing), its owner and
// timestamps, and the store's metadata.
//
// Every change is durable before the method returns: it is appended to a journal
// as one checksummed record and fdatasync'ed, and only then applied in memory. A
// kill -9 at any instant therefore loses no acknowledged change, and a change that
// was in flight is either entirely applied or not at all. Open replays the journal
// over the last snapshot, cuts a torn tail, and refuses files that are damaged in
// any other way. When the journal grows past Options.CompactBytes the state is
// written as a new snapshot (atomically, by rename) and a new journal is started.
//
// A write that fails (a full disk, an I/O error) is never acknowledged and
// leaves the files as the last acknowledged change left them: the journal's
// new space is given back, a record's bytes are zeroed again; what cannot be
// undone at once is undone before the next write, which waits for it. The
// store stays open and takes changes again as soon as writes succeed; Probe
// tells when that is, and keeps a reserve of journal space so that changes
// do not meet a full disk first.
//
// A Store is safe for concurrent use. Changes are serialized and each costs one
// journal append and one fdatasync: an Assign takes about 0.2 ms (p50) on this
// project's reference machine (BenchmarkAssignRelease). Reads wait for a change
// in progress.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/vnet-cni/vnet-cni/internal/atomicfile"
)

// DefaultCompactBytes is the journal size that triggers a compaction when
// Options.CompactBytes is zero. With ~300-byte records it is a few thousand
// changes, and a snapshot of 255 records is about 80 KiB.
const DefaultCompactBytes = 1 << 20

// Options tune a Store. The zero value is ready to use.
type Options struct {
	// Now is the clock for the timestamps of records; nil means time.Now.
	Now func() time.Time
	// CompactBytes is the journal size after which the store writes a
	// snapshot and starts a new journal; zero means DefaultCompactBytes.
	CompactBytes int64
	// Salvage makes Open keep what is intact of damaged files instead of
	// refusing them: it moves the damaged files aside (renamed with
	// ".damaged-<time>", the three newest sets kept), writes the intact
	// state (the snapshot if intact, and the journal's records before the
	// damage) as a new snapshot, describes the damage in Stats().Recovery
	// and leaves the store marked as recovering (see Recovering). Only an
	// owner that can rebuild what was lost, from a witness outside the
	// store, should set it.
	Salvage bool
}

// Store is an open address store. Create it with Open and Close it when done.
type Store struct {
	dir          string
	now          func() time.Time
	compactBytes int64
	salvage      bool

	// mu guards every field below. It is held across the journal write and
	// its fdatasync, so changes reach the disk in the order they are applied.
	mu      sync.Mutex
	lock    *os.File // nil once closed
	journal *os.File
	// writeErr is the error of the last write that failed (a change's, a
	// repair's or a probe's); nil once one succeeded again.
	writeErr error
	// dirtyFrom..dirtyTo is journal space that a failed record write may
	// have left non-zero; dirUnsynced says that a compaction renamed a new
	// journal into place and could not sync the directory. Both are
	// repaired (repairLocked) before anything else is written.
	dirtyFrom, dirtyTo int64
	dirUnsynced        bool
	seq                uint64
	// journalBytes is where the next record goes; journalSize is how far
	// the journal file is already zero-filled (see extendJournalLocked).
	journalBytes int64
	journalSize  int64
	meta         storeMeta
	records      map[netip.Addr]Record
	byAttachment map[Attachment]netip.Addr
	// changed is the sequence number of each address's last change made
	// since the store was opened (in memory only; see Claim.Seen).
	changed     map[netip.Addr]uint64
	compactions int
	compactErr  error
	recovery    Recovery
}

// Open opens (or creates) the store in dir, creating dir with mode 0700 and
// setting its mode to 0700. It takes an exclusive lock on the directory (an
// error wrapping ErrLocked if another process or another Open holds it),
// replays the journal over the snapshot, clears a torn journal tail (a
// record a crash cut while writing it, see tailDamage), and checks the
// invariants (Validate). Files that are damaged in any other way give an
// error wrapping ErrCorrupt, or are salvaged with Options.Salvage.
func Open(dir string, opts Options) (*Store, error) {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := os.Chmod(dir, dirMode); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s := &Store{
		dir:          dir,
		now:          opts.Now,
		compactBytes: opts.CompactBytes,
		salvage:      opts.Salvage,
		lock:         lock,
	}
	s.reset()
	if s.now == nil {
		s.now = time.Now
	}
	if s.compactBytes <= 0 {
		s.compactBytes = DefaultCompactBytes
	}
	if err := s.load(); err != nil {
		return nil, errors.Join(fmt.Errorf("open store %s: %w", dir, err), s.closeFiles())
	}
	return s, nil
}

// reset empties the in-memory state.
func (s *Store) reset() {
	s.seq = 0
	s.records = map[netip.Addr]Record{}
	s.byAttachment = map[Attachment]netip.Addr{}
	s.changed = map[netip.Addr]uint64{}
}

// load reads the snapshot and the journal. It runs before s is shared.
func (s *Store) load() error {
	// Temporary files of a write that a crash cut: the snapshot's (see
	// atomicfile), and the journal's of a compaction.
	tmps, err := filepath.Glob(filepath.Join(s.dir, atomicfile.TempPattern(snapshotName)))
	if err != nil {
		return err
	}
	for _, p := range append(tmps, filepath.Join(s.dir, journalName+tmpSuffix)) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	var damage []error
	snap, snapExists, err := loadSnapshot(filepath.Join(s.dir, snapshotName))
	snapDamaged := errors.Is(err, ErrCorrupt)
	switch {
	case snapDamaged:
		damage = append(damage, err)
	case err != nil:
		return err
	default:
		s.seq = snap.Seq
		s.meta = snap.Meta
		for _, r := range snap.Records {
			s.applyPut(r)
		}
	}

	jpath := filepath.Join(s.dir, journalName)
	_, err = os.Lstat(jpath)
	journalExists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("open journal: %w", err)
	}
	var data []byte
	if journalExists || !snapExists {
		// A journal missing beside a snapshot is damage, and a refused
		// Open must not leave a new one in its place.
		f, err := os.OpenFile(jpath, os.O_RDWR|os.O_CREATE, fileMode)
		if err != nil {
			return fmt.Errorf("open journal: %w", err)
		}
		s.journal = f
		if data, err = io.ReadAll(f); err != nil {
			return fmt.Errorf("read journal: %w", err)
		}
	}
	off, err := s.replay(data, snapDamaged)
	torn := 0
	if err == nil {
		torn, err = tailDamage(data, off)
	}
	if err != nil {
		damage = append(damage, err)
	}
	switch {
	case snapExists && !journalExists:
		damage = append(damage, fmt.Errorf("journal missing beside the snapshot: %w", ErrCorrupt))
	case snapExists && len(data) == 0:
		// A compaction starts a zero-filled journal.
		damage = append(damage, fmt.Errorf("journal empty beside the snapshot: %w", ErrCorrupt))
	}
	if len(damage) == 0 {
		if err := s.validateLocked(); err != nil {
			damage = append(damage, fmt.Errorf("%w: %w", ErrCorrupt, err))
		}
	}
	if len(damage) > 0 {
		if !s.salvage {
			return errors.Join(damage...)
		}
		return s.salvageLocked(errors.Join(damage...))
	}
	// Past the last intact record the journal holds zeros (space filled
	// ahead of time) and, after a crash in the middle of a write, the torn
	// record before them. The torn bytes were never acknowledged: they are
	// zeroed, and the next record overwrites them.
	if torn > 0 {
		f := s.journal
		if _, err := f.WriteAt(make([]byte, torn), int64(off)); err != nil {
			return fmt.Errorf("clear torn journal tail: %w", err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("clear torn journal tail: %w", err)
		}
		s.recovery.TruncatedBytes = int64(torn)
	}
	s.recovery.Empty = !snapExists && s.seq == 0
	s.journalBytes = int64(off)
	s.journalSize = int64(len(data))
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("sync store directory: %w", err)
	}
	return nil
}

// salvageLocked keeps what was read before the damage: it moves the damaged
// files aside, writes the state as a new snapshot with a new journal, and
// marks the store as recovering. A state that breaks the invariants is not
// kept at all. It runs before s is shared.
func (s *Store) salvageLocked(damage error) error {
	now := s.timestamp()
	moved, err := moveAside(s.dir, now.Format("20060102T150405.000000000Z"))
	s.recovery.MovedAside = moved
	if err != nil {
		return errors.Join(damage, err)
	}
	if s.validateLocked() != nil {
		seq := s.seq
		s.reset()
		s.seq = seq
	}
	s.recovery.Damage = damage.Error()
	s.recovery.Salvaged = len(s.records)
	s.meta.Recovery = &RecoveryMark{Kind: RecoveryDamaged, Reason: damage.Error(), Since: now}
	// The renamed journal is still open: the compaction replaces it.
	s.journalBytes, s.journalSize = 0, 0
	if err := s.compactLocked(); err != nil {
		return errors.Join(damage, fmt.Errorf("write the salvaged state: %w", err))
	}
	s.compactions = 0
	return nil
}

// replay applies the journal frames in data and returns the offset of the
// first byte after the last intact frame. It stops at the first frame that
// is not intact; an intact frame that cannot be applied (undecodable, out
// of sequence) is an error wrapping ErrCorrupt, returned with the offset of
// that frame. Without a snapshot to follow (anyStart), the first record may
// have any sequence number.
func (s *Store) replay(data []byte, anyStart bool) (int, error) {
	off := 0
	var last uint64
	for off < len(data) {
		payload, n, err := readFrame(data[off:])
		if err != nil {
			break
		}
		var e entry
		if err := json.Unmarshal(payload, &e); err != nil {
			return off, fmt.Errorf("journal record at offset %d: %w: %w", off, ErrCorrupt, err)
		}
		if anyStart && last == 0 && e.Seq > 0 {
			s.seq = e.Seq - 1
		}
		switch {
		case last != 0 && e.Seq != last+1:
			return off, fmt.Errorf("journal record at offset %d: sequence %d after %d: %w", off, e.Seq, last, ErrCorrupt)
		case e.Seq <= s.seq:
			// Already in the snapshot: a crash hit a compaction between
			// the snapshot's rename and the new journal's.
		case e.Seq != s.seq+1:
			return off, fmt.Errorf("journal record at offset %d: sequence %d does not follow the snapshot's %d: %w",
				off, e.Seq, s.seq, ErrCorrupt)
		default:
			s.apply(e)
			s.seq = e.Seq
			s.recovery.Replayed++
		}
		last = e.Seq
		off += n
	}
	return off, nil
}

// Close releases the lock and closes the files. Further calls return ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return ErrClosed
	}
	return s.closeFiles()
}

// closeFiles closes the journal and the lock file. Call it with mu held or
// before s is shared.
func (s *Store) closeFiles() error {
	var errs []error
	if s.journal != nil {
		errs = append(errs, s.journal.Close())
		s.journal = nil
	}
	if s.lock != nil {
		// Closing the last descriptor drops the flock.
		errs = append(errs, s.lock.Close())
		s.lock = nil
	}
	return errors.Join(errs...)
}

// writableLocked returns ErrClosed for a closed store and otherwise
// finishes the repair a failed write left; an error wraps ErrUnwritable.
func (s *Store) writableLocked() error {
	if s.lock == nil {
		return ErrClosed
	}
	if err := s.repairLocked(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnwritable, err)
	}
	return nil
}

// repairLocked undoes what a failed write left on disk, so that the files
// are exactly as the last acknowledged change left them: it zeroes (and
// syncs) the journal space a failed record write touched, and syncs the
// directory a compaction renamed a journal into. Until it succeeds nothing
// else is written.
func (s *Store) repairLocked() error {
	if s.dirtyTo > s.dirtyFrom {
		if err := zeroRange(s.journal, s.dirtyFrom, s.dirtyTo); err != nil {
			s.writeErr = err
			return fmt.Errorf("clear a failed journal record: %w", err)
		}
		s.dirtyFrom, s.dirtyTo = 0, 0
	}
	if s.dirUnsynced {
		if err := syncDir(s.dir); err != nil {
			s.writeErr = err
			return fmt.Errorf("sync the store directory after a compaction: %w", err)
		}
		s.dirUnsynced = false
	}
	return nil
}

// commitLocked makes the change durable, then applies it in memory, then
// compacts when the journal has grown too large. A failure wraps
// ErrUnwritable: the change is neither applied nor acknowledged, and the
// journal holds nothing of it, now or (when clearing it failed too) before
// the next write. Were the process to die before that, the record could be
// replayed; every record is a safe absolute result (a failed Assign is a
// leak that the runtime's DEL or GC releases, never a second owner).
func (s *Store) commitLocked(e entry) error {
	if err := s.writableLocked(); err != nil {
		return err
	}
	e.Seq = s.seq + 1
	payload, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode journal record: %w", err)
	}
	frame := appendFrame(make([]byte, 0, headerSize+len(payload)), payload)
	off, end := s.journalBytes, s.journalBytes+int64(len(frame))
	if err := s.extendJournalLocked(end); err != nil {
		s.writeErr = err
		return fmt.Errorf("%w: extend journal: %w", ErrUnwritable, err)
	}
	if _, err := s.journal.WriteAt(frame, off); err != nil {
		return s.recordFailedLocked(off, end, "append to journal", err)
	}
	if err := fdatasync(s.journal); err != nil {
		// The record may or may not be on disk (after a failed fsync the
		// page cache no longer tells); zeroing it and syncing again makes
		// sure that it is not.
		return s.recordFailedLocked(off, end, "sync journal", err)
	}
	s.writeErr = nil
	s.seq = e.Seq
	s.journalBytes = end
	s.apply(e)
	for _, ip := range e.Del {
		s.changed[ip] = e.Seq
	}
	for _, r := range e.Put {
		s.changed[r.IP] = e.Seq
	}
	if s.journalBytes >= s.compactBytes {
		// The change is durable whatever happens here.
		if err := s.compactLocked(); err != nil {
			s.compactErr = err
		}
	}
	return nil
}

// recordFailedLocked handles a record write or sync that failed: the
// record's space is zeroed again, now or before the next write.
func (s *Store) recordFailedLocked(off, end int64, what string, err error) error {
	s.dirtyFrom, s.dirtyTo = off, end
	rerr := s.repairLocked()
	s.writeErr = err
	return fmt.Errorf("%w: %s: %w", ErrUnwritable, what, errors.Join(err, rerr))
}

// Probe tells whether the store can take changes, and prepares it to: it
// finishes the repair of a failed write, keeps at least journalReserve
// bytes of zero-filled journal ahead of the next record (extending the
// journal when less is left), and after a failed write, when nothing else
// needed writing, writes zeros over the start of that reserve and syncs them.
// vnet-ipamd calls it periodically and is not ready while it fails; an error
// wraps ErrUnwritable.
//
// The reserve means that changes keep going into space the store already
// holds while the disk fills up, and that Probe notices the full disk first:
// while it does, about journalReserve/300 changes can still be made.
func (s *Store) Probe() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writableLocked(); err != nil {
		return err
	}
	switch {
	case s.journalSize-s.journalBytes < journalReserve:
		if err := s.extendJournalLocked(s.journalBytes + journalReserve); err != nil {
			s.writeErr = err
			return fmt.Errorf("%w: reserve journal space: %w", ErrUnwritable, err)
		}
	case s.writeErr != nil:
		if err := zeroRange(s.journal, s.journalBytes, min(s.journalBytes+probeBytes, s.journalSize)); err != nil {
			s.writeErr = err
			return fmt.Errorf("%w: probe write: %w", ErrUnwritable, err)
		}
	}
	s.writeErr = nil
	return nil
}

// journalChunk is how much zero-filled space the journal gains at a time.
const journalChunk = 256 << 10

// journalReserve is the zero-filled journal space that Probe keeps ahead
// of the next record: about 800 changes of 300 bytes.
const journalReserve = journalChunk

// probeBytes is the size of Probe's test write.
const probeBytes = 4 << 10

// extendJournalLocked makes sure that the journal file is zero-filled up to
// at least end. Records are then written over zeros inside the file, so
// that their fdatasync has only the data to flush: appending would change
// the file's size, and the size update makes every fdatasync commit the
// filesystem's journal too (measured: see BenchmarkAssignRelease). The
// zeros are written, not fallocated: unwritten extents would turn each
// record's fdatasync back into a metadata commit. One fsync per chunk makes
// the new size durable.
//
// On failure (a full disk) the journal is cut back to its size before, so
// the space a partial fill took goes back to the filesystem.
func (s *Store) extendJournalLocked(end int64) error {
	if end <= s.journalSize {
		return nil
	}
	size := (end + journalChunk - 1) / journalChunk * journalChunk
	if err := zeroFill(s.journal, s.journalSize, size); err != nil {
		// Zeros past the records are free space to Open, so a cut that
		// fails too loses nothing; it only keeps the space.
		if terr := s.journal.Truncate(s.journalSize); terr != nil {
			return errors.Join(err, fmt.Errorf("give back the journal's new space: %w", terr))
		}
		return err
	}
	s.journalSize = size
	return nil
}

// zeroFill writes zeros to f from off to end and fsyncs it.
func zeroFill(f *os.File, off, end int64) error {
	if _, err := f.WriteAt(make([]byte, end-off), off); err != nil {
		return err
	}
	return f.Sync()
}

// zeroRange writes zeros over f's existing bytes from off to end and
// fdatasyncs them (the file's size does not change).
func zeroRange(f *os.File, off, end int64) error {
	if end <= off {
		return nil
	}
	if _, err := f.WriteAt(make([]byte, end-off), off); err != nil {
		return err
	}
	return fdatasync(f)
}

// compactLocked writes the state as the snapshot and starts a new journal.
func (s *Store) compactLocked() error {
	snap := snapshotFile{Version: snapshotVersion, Seq: s.seq, Meta: s.meta, Records: s.listLocked()}
	payload, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("compact: encode snapshot: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(s.dir, snapshotName), appendFrame(nil, payload), fileMode); err != nil {
		return fmt.Errorf("compact: write snapshot: %w", err)
	}
	// From here the old journal holds only records the snapshot covers; Open
	// skips them, so a crash before the switch below loses nothing.
	tmp := filepath.Join(s.dir, journalName+tmpSuffix)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, fileMode)
	if err != nil {
		return fmt.Errorf("compact: create journal: %w", err)
	}
	if err := zeroFill(f, 0, journalChunk); err != nil {
		return errors.Join(fmt.Errorf("compact: create journal: %w", err), f.Close(), os.Remove(tmp))
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, journalName)); err != nil {
		return errors.Join(fmt.Errorf("compact: switch journal: %w", err), f.Close(), os.Remove(tmp))
	}
	old := s.journal
	s.journal = f
	s.journalBytes = 0
	s.journalSize = journalChunk
	s.compactions++
	s.compactErr = nil
	var cerr error
	if old != nil {
		// A salvage renamed the old journal; a missing one was never opened.
		cerr = old.Close()
	}
	if err := syncDir(s.dir); err != nil {
		// The rename may not be durable: a record written into the new
		// journal could vanish with it. The next write syncs first.
		s.dirUnsynced = true
		s.writeErr = err
		return errors.Join(fmt.Errorf("compact: sync directory: %w", err), cerr)
	}
	if cerr != nil {
		return fmt.Errorf("compact: close old journal: %w", cerr)
	}
	return nil
}

// Compact writes a snapshot and starts a new journal now, whatever the
// journal's size. vnet-ipamd calls it when it stops, so that the next start
// reads one snapshot instead of replaying the journal; it is never needed
// for correctness.
func (s *Store) Compact() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writableLocked(); err != nil {
		return err
	}
	return s.compactLocked()
}

func (s *Store) apply(e entry) {
	for _, ip := range e.Del {
		if r, ok := s.records[ip]; ok {
			s.unindex(r)
			delete(s.records, ip)
		}
	}
	for _, r := range e.Put {
		s.applyPut(r)
	}
	if e.Meta != nil {
		s.meta = *e.Meta
	}
}

func (s *Store) applyPut(r Record) {
	if old, ok := s.records[r.IP]; ok {
		s.unindex(old)
	}
	s.records[r.IP] = r
	if r.State.owned() {
		s.byAttachment[r.Owner.Attachment()] = r.IP
	}
}

func (s *Store) unindex(r Record) {
	if !r.State.owned() {
		return
	}
	// Another record of the same change may already have taken the key.
	if a := r.Owner.Attachment(); s.byAttachment[a] == r.IP {
		delete(s.byAttachment, a)
	}
}

// timestamp returns the clock's time in UTC without monotonic reading, as it
// will read back from disk.
func (s *Store) timestamp() time.Time { return s.now().UTC().Round(0) }

// AddFree adds addresses of the interface iface (the cloud's interface ID)
// as free, for example after the cloud added them to that interface.
// Addresses already in the store, in any state, are left alone. It returns
// the addresses added, sorted. An invalid or zoned address gives an error
// wrapping ErrInvalidIP and nothing is added.
func (s *Store) AddFree(iface string, ips ...netip.Addr) ([]netip.Addr, error) {
	if err := validIPs(ips); err != nil {
		return nil, fmt.Errorf("add free: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.timestamp()
	var added []netip.Addr
	var puts []Record
	for _, ip := range sortedUnique(ips) {
		if _, ok := s.records[ip]; ok {
			continue
		}
		added = append(added, ip)
		puts = append(puts, Record{IP: ip, Interface: iface, State: StateFree, Since: now})
	}
	if len(puts) == 0 {
		return nil, s.writableLocked()
	}
	if err := s.commitLocked(entry{Op: "add", Put: puts}); err != nil {
		return nil, fmt.Errorf("add free: %w", err)
	}
	return added, nil
}

// Assign gives the attachment of owner an address and returns its record.
//
// It is idempotent: an attachment that already holds an assigned address gets
// that record back without any change (the pod details of the first call are
// kept). An attachment whose address is still cooling gets that same address
// back (a retried ADD after a DEL): giving it to its previous owner is safe and
// keeps the attachment at one address. Otherwise Assign takes the free address
// that has been free the longest (ties: the lowest address), so a just-freed
// address is reused last. With no free address it returns an error wrapping
// ErrNoFree; with an empty container ID or interface name one wrapping
// ErrInvalidAttachment.
func (s *Store) Assign(owner Owner) (Record, error) { return s.AssignAt(owner, Stamp{}) }

// AssignAt is Assign for an allocation made at `at`, which the record keeps
// as its Allocated stamp (the later one when the attachment already holds
// the address, so that a repeated allocation is recorded too): a release
// made before it cannot free the address (see ReleaseAt). A repeated
// allocation with a stamp no later than the recorded one changes nothing.
func (s *Store) AssignAt(owner Owner, at Stamp) (Record, error) {
	a := owner.Attachment()
	if err := a.validate(); err != nil {
		return Record{}, fmt.Errorf("assign: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writableLocked(); err != nil {
		return Record{}, fmt.Errorf("assign %s: %w", a, err)
	}
	now := s.timestamp()
	if ip, ok := s.byAttachment[a]; ok {
		r := s.records[ip]
		if r.State == StateAssigned {
			if at.IsZero() || at.notAfter(allocatedStamp(r)) {
				return r, nil
			}
			r.Allocated = at
			if err := s.commitLocked(entry{Op: "allocate again", Put: []Record{r}}); err != nil {
				return Record{}, fmt.Errorf("assign %s: %w", a, err)
			}
			return r, nil
		}
		// A lost address stays lost: the cloud has not shown it again.
		r = Record{IP: ip, Interface: r.Interface, State: StateAssigned, Owner: owner, Since: now, AssignedAt: now,
			Allocated: at, LostAt: r.LostAt}
		if err := s.commitLocked(entry{Op: "assign", Put: []Record{r}}); err != nil {
			return Record{}, fmt.Errorf("assign %s: %w", a, err)
		}
		return r, nil
	}
	var best Record
	found := false
	for _, r := range s.records {
		if r.State != StateFree {
			continue
		}
		if !found || r.Since.Before(best.Since) || (r.Since.Equal(best.Since) && r.IP.Less(best.IP)) {
			best, found = r, true
		}
	}
	if !found {
		return Record{}, fmt.Errorf("assign %s: %w", a, ErrNoFree)
	}
	r := Record{IP: best.IP, Interface: best.Interface, State: StateAssigned, Owner: owner, Since: now, AssignedAt: now, Allocated: at}
	if err := s.commitLocked(entry{Op: "assign", Put: []Record{r}}); err != nil {
		return Record{}, fmt.Errorf("assign %s: %w", a, err)
	}
	return r, nil
}

// Release moves the attachment's address from assigned to cooling and returns
// its record and true. It is idempotent: an address already cooling is
// returned unchanged. An attachment without an address is not an error: it
// returns false (the daemon answers a repeated DEL with success).
func (s *Store) Release(a Attachment) (Record, bool, error) { return s.ReleaseAt(a, Stamp{}) }

// ReleaseAt is Release for a release made at `at`. A release made no later
// than the attachment's latest allocation (the record's Allocated stamp, or
// its AssignedAt for records without one) was meant for an earlier
// assignment of the attachment, one that a later ADD replaced: it changes
// nothing and returns the record, false and an error wrapping
// ErrSuperseded. A zero stamp, or one whose order is unknown, releases.
func (s *Store) ReleaseAt(a Attachment, at Stamp) (Record, bool, error) {
	if err := a.validate(); err != nil {
		return Record{}, false, fmt.Errorf("release: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writableLocked(); err != nil {
		return Record{}, false, fmt.Errorf("release %s: %w", a, err)
	}
	ip, ok := s.byAttachment[a]
	if !ok {
		return Record{}, false, nil
	}
	r := s.records[ip]
	if r.State == StateCooling {
		return r, true, nil
	}
	if at.notAfter(allocatedStamp(r)) {
		return r, false, fmt.Errorf("release %s of %s: %w", a, r.IP, ErrSuperseded)
	}
	now := s.timestamp()
	r.State = StateCooling
	r.Since = now
	r.ReleasedAt = now
	if err := s.commitLocked(entry{Op: "release", Put: []Record{r}}); err != nil {
		return Record{}, false, fmt.Errorf("release %s: %w", a, err)
	}
	return r, true, nil
}

// allocatedStamp is the stamp of the record's latest allocation; records
// written before stamps existed have their assignment's wall-clock time.
func allocatedStamp(r Record) Stamp {
	if r.Allocated.IsZero() {
		return Stamp{Wall: r.AssignedAt}
	}
	return r.Allocated
}

// Promote makes free, in one change, every cooling address released at
// least cooldown before now and every quarantined address whose quarantine
// ends at or before now, and returns them sorted. The new free-since time is
// now. Lost addresses are not promoted: they are not on the interface (see
// ForgetLost).
func (s *Store) Promote(now time.Time, cooldown time.Duration) ([]netip.Addr, error) {
	now = now.UTC().Round(0)
	s.mu.Lock()
	defer s.mu.Unlock()
	var puts []Record
	for _, r := range s.records {
		if r.State == StateCooling && !r.Lost() && !r.Since.Add(cooldown).After(now) ||
			r.State == StateQuarantined && !r.Until.After(now) {
			puts = append(puts, Record{IP: r.IP, Interface: r.Interface, State: StateFree, Since: now})
		}
	}
	if len(puts) == 0 {
		return nil, s.writableLocked()
	}
	slices.SortFunc(puts, func(a, b Record) int { return a.IP.Compare(b.IP) })
	if err := s.commitLocked(entry{Op: "promote", Put: puts}); err != nil {
		return nil, fmt.Errorf("promote: %w", err)
	}
	promoted := make([]netip.Addr, len(puts))
	for i, r := range puts {
		promoted[i] = r.IP
	}
	return promoted, nil
}

// ForgetLost removes the lost cooling addresses released at least cooldown
// before now, in one change, and returns their records sorted by address:
// their owner is done with them and the cloud no longer has them on the
// interface, so there is nothing left to keep. Should the cloud give one
// back later, it is a new free address.
func (s *Store) ForgetLost(now time.Time, cooldown time.Duration) ([]Record, error) {
	now = now.UTC().Round(0)
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []Record
	var dels []netip.Addr
	for _, r := range s.listLocked() {
		if r.State == StateCooling && r.Lost() && !r.Since.Add(cooldown).After(now) {
			gone = append(gone, r)
			dels = append(dels, r.IP)
		}
	}
	if len(dels) == 0 {
		return nil, s.writableLocked()
	}
	if err := s.commitLocked(entry{Op: "forget lost", Del: dels}); err != nil {
		return nil, fmt.Errorf("forget lost: %w", err)
	}
	return gone, nil
}

// Quarantine keeps addresses out of the pool until until, in one change:
// addresses unknown to the store are added (ips maps each to its
// interface's ID) and free, cooling and quarantined ones become
// quarantined until until at the latest (cooling ones lose their owner).
// Assigned, releasing and lost addresses are left as they are (none of them
// becomes free by itself). It returns the
// addresses whose record changed, sorted.
func (s *Store) Quarantine(until time.Time, ips map[netip.Addr]string) ([]netip.Addr, error) {
	all := slices.Collect(maps.Keys(ips))
	if err := validIPs(all); err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	until = until.UTC().Round(0)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writableLocked(); err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	now := s.timestamp()
	var puts []Record
	for _, ip := range sortedUnique(all) {
		r, ok := s.records[ip]
		switch {
		case !ok:
			puts = append(puts, Record{IP: ip, Interface: ips[ip], State: StateQuarantined, Since: now, Until: until})
		case r.State == StateFree || r.State == StateCooling && !r.Lost():
			puts = append(puts, Record{IP: ip, Interface: r.Interface, State: StateQuarantined, Since: now, Until: until})
		case r.State == StateQuarantined && r.Until.Before(until):
			r.Until = until
			puts = append(puts, r)
		}
	}
	if len(puts) == 0 {
		return nil, nil
	}
	if err := s.commitLocked(entry{Op: "quarantine", Put: puts}); err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	out := make([]netip.Addr, len(puts))
	for i, r := range puts {
		out[i] = r.IP
	}
	return out, nil
}

// Claim rebuilds assignments from live attachments that a witness outside
// the store reports, in one change. The rule is one-sided: an address a
// live attachment holds is never left free. Claims are taken in address
// order; each makes its address assigned to its owner, whatever state the
// store has it in (unknown, free, cooling, quarantined or releasing),
// unless the store has it assigned to another attachment, or an earlier
// claim of this call named it: then the claim is a conflict and nothing
// changes for that address (it is out of the pool already). Another address
// that the claiming attachment held is quarantined until until (the store
// keeps one address per attachment). An address assigned to the claim's own
// owner is left as it is. A superseding claim (Claim.Supersede) takes its
// address from another attachment too. A claim whose address changed after
// the witness was read (Claim.Seen) changes nothing either (Stale): the
// change may be the attachment's own release. Invalid claims give an error
// and change nothing.
func (s *Store) Claim(until time.Time, claims ...Claim) (ClaimResult, error) {
	for _, c := range claims {
		if err := validIPs([]netip.Addr{c.IP}); err != nil {
			return ClaimResult{}, fmt.Errorf("claim: %w", err)
		}
		if err := c.Owner.Attachment().validate(); err != nil {
			return ClaimResult{}, fmt.Errorf("claim %s: %w", c.IP, err)
		}
	}
	claims = slices.Clone(claims)
	slices.SortStableFunc(claims, func(a, b Claim) int { return a.IP.Compare(b.IP) })
	until = until.UTC().Round(0)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writableLocked(); err != nil {
		return ClaimResult{}, fmt.Errorf("claim: %w", err)
	}
	now := s.timestamp()
	var res ClaimResult
	puts := map[netip.Addr]Record{}
	get := func(ip netip.Addr) (Record, bool) {
		if r, ok := puts[ip]; ok {
			return r, true
		}
		r, ok := s.records[ip]
		return r, ok
	}
	// held is the attachment index as this change leaves it so far.
	held := map[Attachment]netip.Addr{}
	holder := func(a Attachment) (netip.Addr, bool) {
		if ip, ok := held[a]; ok {
			return ip, ip.IsValid()
		}
		ip, ok := s.byAttachment[a]
		return ip, ok
	}
	claimed := map[netip.Addr]bool{}
	for _, c := range claims {
		a := c.Owner.Attachment()
		r, known := get(c.IP)
		switch {
		case known && r.State == StateAssigned && r.Owner.Attachment() == a:
			claimed[c.IP] = true
			continue
		case claimed[c.IP], known && r.State == StateAssigned && !c.Supersede:
			res.Conflicts = append(res.Conflicts, ClaimConflict{Claim: c, Holder: r.Owner})
			continue
		case c.Seen > 0 && s.changed[c.IP] > c.Seen:
			res.Stale = append(res.Stale, c)
			continue
		case known && r.State == StateAssigned:
			res.Superseded = append(res.Superseded, r)
		}
		claimed[c.IP] = true
		if other, ok := holder(a); ok && other != c.IP {
			o, _ := get(other)
			res.Displaced = append(res.Displaced, o)
			puts[other] = Record{IP: other, Interface: o.Interface, State: StateQuarantined, Since: now, Until: until}
			held[a] = netip.Addr{}
		}
		owner := c.Owner
		var allocated Stamp
		if known && r.State.owned() && r.Owner.Attachment() == a {
			// A cooling address back to its owner keeps the pod details
			// and the stamp of its allocation.
			if owner.PodNamespace == "" && owner.PodName == "" {
				owner.PodNamespace, owner.PodName, owner.Netns = r.Owner.PodNamespace, r.Owner.PodName, r.Owner.Netns
			}
			allocated = r.Allocated
		} else if known && r.State.owned() {
			held[r.Owner.Attachment()] = netip.Addr{}
		}
		iface := c.Interface
		if iface == "" {
			iface = r.Interface
		}
		prev := r
		if !known {
			prev = Record{IP: c.IP}
		}
		// An address the cloud lost stays lost: the claim does not put it back.
		nr := Record{IP: c.IP, Interface: iface, State: StateAssigned, Owner: owner, Since: now, AssignedAt: now,
			Allocated: allocated, LostAt: r.LostAt}
		puts[c.IP] = nr
		held[a] = c.IP
		res.Rebuilt = append(res.Rebuilt, nr)
		res.Previous = append(res.Previous, prev)
	}
	if len(puts) == 0 {
		return res, nil
	}
	e := entry{Op: "claim", Put: slices.SortedFunc(maps.Values(puts), func(a, b Record) int { return a.IP.Compare(b.IP) })}
	if err := s.commitLocked(e); err != nil {
		return ClaimResult{}, fmt.Errorf("claim: %w", err)
	}
	return res, nil
}

// MarkReleasing moves free addresses to releasing before the daemon asks the
// cloud to remove them. All or nothing: an unknown address gives an error
// wrapping ErrUnknownIP, one that is neither free nor already releasing a
// *TransitionError, and then nothing changes. Addresses already releasing are
// left as they are.
func (s *Store) MarkReleasing(ips ...netip.Addr) error {
	return s.transition("mark releasing", ips, StateFree, StateReleasing)
}

func (s *Store) transition(op string, ips []netip.Addr, from, to State) error {
	if err := validIPs(ips); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writableLocked(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	now := s.timestamp()
	var puts []Record
	for _, ip := range sortedUnique(ips) {
		r, ok := s.records[ip]
		switch {
		case !ok:
			return fmt.Errorf("%s %s: %w", op, ip, ErrUnknownIP)
		case r.State == to:
		case r.State == from:
			puts = append(puts, Record{IP: ip, Interface: r.Interface, State: to, Since: now})
		default:
			return fmt.Errorf("%s: %w", op, &TransitionError{IP: ip, From: r.State, To: to})
		}
	}
	if len(puts) == 0 {
		return nil
	}
	if err := s.commitLocked(entry{Op: op, Put: puts}); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// Remove deletes releasing addresses once the cloud confirmed that they left
// the NIC. Addresses not in the store are skipped (a repeated Remove is not an
// error). All or nothing: an address in another state gives a
// *TransitionError (To is empty) and nothing is removed.
func (s *Store) Remove(ips ...netip.Addr) error {
	if err := validIPs(ips); err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writableLocked(); err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	var dels []netip.Addr
	for _, ip := range sortedUnique(ips) {
		r, ok := s.records[ip]
		switch {
		case !ok:
		case r.State == StateReleasing:
			dels = append(dels, ip)
		default:
			return fmt.Errorf("remove: %w", &TransitionError{IP: ip, From: r.State})
		}
	}
	if len(dels) == 0 {
		return nil
	}
	if err := s.commitLocked(entry{Op: "remove", Del: dels}); err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	return nil
}

// Reconcile aligns the store with the secondary addresses the cloud reports
// on the instance's interfaces (primary addresses excluded), given as address
// → interface ID, in one change: addresses unknown to the store become free;
// free and releasing records whose address is no longer on any interface are
// dropped and returned for the daemon to log; assigned and cooling records
// whose address is no longer on any interface keep their state, their owner
// and their interface and are marked lost (LostAt), for the daemon to put
// them back: a pod may still use the address, so it never becomes free
// while the cloud does not show it. Lost records that are on an interface
// again are no longer lost. Records whose interface differs from the cloud's
// (records written before the store knew interfaces have none) take the
// cloud's and keep their state. Records still on an interface keep their
// state, releasing ones included: the daemon decides whether to retry their
// removal.
func (s *Store) Reconcile(onCloud map[netip.Addr]string) (ReconcileResult, error) {
	ips := make([]netip.Addr, 0, len(onCloud))
	for ip := range onCloud {
		ips = append(ips, ip)
	}
	if err := validIPs(ips); err != nil {
		return ReconcileResult{}, fmt.Errorf("reconcile: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writableLocked(); err != nil {
		return ReconcileResult{}, fmt.Errorf("reconcile: %w", err)
	}
	now := s.timestamp()
	var res ReconcileResult
	var e entry
	for _, ip := range sortedUnique(ips) {
		r, ok := s.records[ip]
		switch {
		case !ok:
			res.Added = append(res.Added, ip)
			e.Put = append(e.Put, Record{IP: ip, Interface: onCloud[ip], State: StateFree, Since: now})
		case r.Interface != onCloud[ip] || r.Lost():
			if r.Interface != onCloud[ip] {
				res.Moved = append(res.Moved, ip)
				r.Interface = onCloud[ip]
			}
			if r.Lost() {
				res.Found = append(res.Found, ip)
				r.LostAt = time.Time{}
			}
			e.Put = append(e.Put, r)
		}
	}
	for _, r := range s.listLocked() {
		if _, ok := onCloud[r.IP]; ok {
			continue
		}
		switch {
		case r.State.owned() && r.Lost():
		case r.State.owned():
			r.LostAt = now
			res.Lost = append(res.Lost, r)
			e.Put = append(e.Put, r)
		default:
			res.Dropped = append(res.Dropped, r)
			e.Del = append(e.Del, r.IP)
		}
	}
	if len(e.Put) == 0 && len(e.Del) == 0 {
		return res, nil
	}
	e.Op = "reconcile"
	if err := s.commitLocked(e); err != nil {
		return ReconcileResult{}, fmt.Errorf("reconcile: %w", err)
	}
	return res, nil
}

// SetBootID records bootID (the kernel's boot id) as the current boot and reports
// whether it differs from a boot id recorded before: true means the node
// rebooted since the store was last used, so the pods' datapath is gone. A
// store without a recorded boot id reports false.
func (s *Store) SetBootID(bootID string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writableLocked(); err != nil {
		return false, fmt.Errorf("set boot id: %w", err)
	}
	if s.meta.BootID == bootID {
		return false, nil
	}
	// A store without a recorded boot id is new: not a reboot.
	changed := s.meta.BootID != ""
	m := s.meta
	m.BootID = bootID
	if err := s.commitLocked(entry{Op: "boot", Meta: &m}); err != nil {
		return false, fmt.Errorf("set boot id: %w", err)
	}
	return changed, nil
}

// BeginRecovery marks the store as recovering (see RecoveryMark), durably:
// the owner found that the store lost state, for example an empty store on
// a node whose datapath shows that it held addresses in this boot. A store
// that is recovering already keeps its mark.
func (s *Store) BeginRecovery(kind, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writableLocked(); err != nil {
		return fmt.Errorf("begin recovery: %w", err)
	}
	if s.meta.Recovery != nil {
		return nil
	}
	m := s.meta
	m.Recovery = &RecoveryMark{Kind: kind, Reason: reason, Since: s.timestamp()}
	if err := s.commitLocked(entry{Op: "recovery", Meta: &m}); err != nil {
		return fmt.Errorf("begin recovery: %w", err)
	}
	return nil
}

// EndRecovery removes the recovery mark once the owner has rebuilt the
// store; without a mark it does nothing.
func (s *Store) EndRecovery() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writableLocked(); err != nil {
		return fmt.Errorf("end recovery: %w", err)
	}
	if s.meta.Recovery == nil {
		return nil
	}
	m := s.meta
	m.Recovery = nil
	if err := s.commitLocked(entry{Op: "recovered", Meta: &m}); err != nil {
		return fmt.Errorf("end recovery: %w", err)
	}
	return nil
}

// Recovering returns the recovery mark, if the store has one: Open salvaged
// damaged files (Options.Salvage) or BeginRecovery was called, and
// EndRecovery was not called since.
func (s *Store) Recovering() (RecoveryMark, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.meta.Recovery == nil {
		return RecoveryMark{}, false
	}
	return *s.meta.Recovery, true
}

// Seq returns the sequence number of the last change: a Claim with it as
// Seen is not made for an address changed after this call.
func (s *Store) Seq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq
}

// Get returns the record of the address held (assigned or cooling) by the
// attachment.
func (s *Store) Get(a Attachment) (Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ip, ok := s.byAttachment[a]
	if !ok {
		return Record{}, false
	}
	return s.records[ip], true
}

// List returns a copy of every record, sorted by address.
func (s *Store) List() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listLocked()
}

func (s *Store) listLocked() []Record {
	out := make([]Record, 0, len(s.records))
	for _, r := range s.records {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Record) int { return a.IP.Compare(b.IP) })
	return out
}

// Counts returns the number of addresses per state.
func (s *Store) Counts() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	var c Counts
	for _, r := range s.records {
		switch r.State {
		case StateFree:
			c.Free++
		case StateAssigned:
			c.Assigned++
		case StateCooling:
			c.Cooling++
		case StateReleasing:
			c.Releasing++
		case StateQuarantined:
			c.Quarantined++
		}
	}
	return c
}

// Stats returns a copy of the store's file statistics.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{
		Seq:                 s.seq,
		JournalBytes:        s.journalBytes,
		Compactions:         s.compactions,
		LastCompactionError: s.compactErr,
		Recovery:            s.recovery,
	}
}

// Validate checks the store's invariants and returns every violation joined:
// every address is valid and has exactly one known state; an owner is set
// exactly for assigned and cooling addresses and has a container ID and an
// interface name; only those can be lost; no two records share an attachment (so no address is
// assigned twice and an attachment has at most one address); the attachment
// index matches the records. Open refuses a store that fails it.
func (s *Store) Validate() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.validateLocked()
}

func (s *Store) validateLocked() error {
	var errs []error
	owners := map[Attachment]netip.Addr{}
	for _, r := range s.listLocked() {
		ip := r.IP
		if !r.IP.IsValid() || r.IP.Zone() != "" {
			errs = append(errs, fmt.Errorf("record with invalid address %q", r.IP))
		}
		if !r.State.valid() {
			errs = append(errs, fmt.Errorf("address %s: unknown state %q", ip, r.State))
		}
		if r.Since.IsZero() {
			errs = append(errs, fmt.Errorf("address %s: no state timestamp", ip))
		}
		if (r.State == StateQuarantined) != !r.Until.IsZero() {
			errs = append(errs, fmt.Errorf("address %s: %s with end of quarantine %q", ip, r.State, r.Until))
		}
		if !r.State.owned() {
			if r.Owner != (Owner{}) {
				errs = append(errs, fmt.Errorf("address %s: %s but owned by %s", ip, r.State, r.Owner.Attachment()))
			}
			if r.Lost() {
				errs = append(errs, fmt.Errorf("address %s: %s but lost (only assigned and cooling addresses are kept when the cloud loses them)", ip, r.State))
			}
			continue
		}
		a := r.Owner.Attachment()
		if err := a.validate(); err != nil {
			errs = append(errs, fmt.Errorf("address %s: %s: %w", ip, r.State, err))
			continue
		}
		if other, dup := owners[a]; dup {
			errs = append(errs, fmt.Errorf("attachment %s holds both %s and %s", a, other, ip))
		}
		owners[a] = ip
		if got, ok := s.byAttachment[a]; !ok || got != ip {
			errs = append(errs, fmt.Errorf("attachment index: %s maps to %s, want %s", a, got, ip))
		}
	}
	for a, ip := range s.byAttachment {
		if owners[a] != ip {
			errs = append(errs, fmt.Errorf("attachment index: stale entry %s -> %s", a, ip))
		}
	}
	return errors.Join(errs...)
}

func validIPs(ips []netip.Addr) error {
	for _, ip := range ips {
		if !ip.IsValid() || ip.Zone() != "" {
			return fmt.Errorf("%q: %w", ip, ErrInvalidIP)
		}
	}
	return nil
}

func sortedUnique(ips []netip.Addr) []netip.Addr {
	out := slices.Clone(ips)
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
