package store

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// State is the life-cycle state of an address. Every address in the store has
// exactly one.
type State string

// The states of an address.
const (
	// StateFree: on the NIC, ready to be assigned.
	StateFree State = "free"
	// StateAssigned: owned by one attachment (a pod's interface).
	StateAssigned State = "assigned"
	// StateCooling: released by its attachment, not reusable until the
	// cooldown has passed (see Store.Promote). The owner is kept.
	StateCooling State = "cooling"
	// StateReleasing: chosen to be removed from the NIC; the cloud call is in
	// flight or its outcome is not known yet.
	StateReleasing State = "releasing"
	// StateQuarantined: on the NIC but kept out of the pool until
	// Record.Until (see Store.Quarantine and Store.Promote), because a pod
	// may hold it that the store does not know: after the store was
	// damaged or lost, an ADD in flight has its address before its veth
	// records it. It has no owner.
	StateQuarantined State = "quarantined"
)

func (s State) valid() bool {
	switch s {
	case StateFree, StateAssigned, StateCooling, StateReleasing, StateQuarantined:
		return true
	}
	return false
}

func (s State) owned() bool { return s == StateAssigned || s == StateCooling }

// Attachment identifies a pod interface the way CNI does: the container ID and
// the interface name inside the container (CNI_CONTAINERID, CNI_IFNAME). It is
// the key of every owner record.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// String returns "containerID/ifName".
func (a Attachment) String() string { return a.ContainerID + "/" + a.IfName }

func (a Attachment) validate() error {
	if a.ContainerID == "" || a.IfName == "" {
		return fmt.Errorf("attachment %q: %w", a.String(), ErrInvalidAttachment)
	}
	return nil
}

// Owner is the attachment an address is assigned to, with the pod details for
// humans. Only ContainerID and IfName identify it.
type Owner struct {
	ContainerID  string `json:"containerID"`
	IfName       string `json:"ifName"`
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	Netns        string `json:"netns,omitempty"`
}

// Attachment returns the key of the owner.
func (o Owner) Attachment() Attachment {
	return Attachment{ContainerID: o.ContainerID, IfName: o.IfName}
}

// Record is the persisted state of one address. Records handed out by the
// store are copies.
type Record struct {
	IP netip.Addr `json:"ip"`
	// Interface is the cloud's ID of the interface the address is on (an
	// Azure NIC's resource ID, an ENI ID). Records written before the store
	// knew interfaces have none: they are on the primary interface, and the
	// daemon's first Reconcile fills it in.
	Interface string `json:"interface,omitempty"`
	State     State  `json:"state"`
	// Owner is set for assigned and cooling addresses and zero otherwise.
	Owner Owner `json:"owner,omitzero"`
	// Since is when the address entered State. For a free address it is the
	// free-since time that the pool maths and the assignment order use.
	Since time.Time `json:"since"`
	// AssignedAt is when the owner got the address (assigned and cooling).
	AssignedAt time.Time `json:"assignedAt,omitzero"`
	// ReleasedAt is when the owner released it (cooling only).
	ReleasedAt time.Time `json:"releasedAt,omitzero"`
	// Allocated is the stamp of the owner's latest allocation of the
	// address (assigned and cooling): a release made before it belongs to
	// an earlier assignment and is superseded (see ReleaseAt). Records
	// written before stamps existed have none; their AssignedAt stands in.
	Allocated Stamp `json:"allocated,omitzero"`
	// LostAt is when the daemon found the address of this assigned or
	// cooling record gone from its interface in the cloud (deleted outside
	// vnet-ipamd, see Reconcile); zero while the cloud has it. A lost
	// address keeps its owner and is never free.
	LostAt time.Time `json:"lostAt,omitzero"`
	// Until is when a quarantined address may become free (quarantined only).
	Until time.Time `json:"until,omitzero"`
}

// Lost reports whether the cloud no longer shows the address on its interface.
func (r Record) Lost() bool { return !r.LostAt.IsZero() }

// Stamp is when a call of the plugin was made, as ipamd/api.Stamp describes
// it: Boot is the node's boot clock (CLOCK_BOOTTIME, nanoseconds), which
// never goes back within the boot BootID names; Wall the wall-clock time.
type Stamp struct {
	Boot   int64     `json:"boot,omitempty"`
	BootID string    `json:"bootID,omitempty"`
	Wall   time.Time `json:"wall,omitzero"`
}

// IsZero reports whether s says nothing about the time of a call.
func (s Stamp) IsZero() bool { return s.Boot == 0 && s.Wall.IsZero() }

// notAfter reports whether s is known to be no later than t: by the boot
// clock when both count in the same boot, else by the wall clock when both
// have one (the wall clock can be stepped; only stamps without a boot clock,
// or of different boots, fall back to it). Unknown order gives false.
func (s Stamp) notAfter(t Stamp) bool {
	if s.Boot != 0 && t.Boot != 0 && s.BootID == t.BootID {
		return s.Boot <= t.Boot
	}
	if !s.Wall.IsZero() && !t.Wall.IsZero() {
		return !s.Wall.After(t.Wall)
	}
	return false
}

// storeMeta describes what the store belongs to. Stores of earlier versions may
// hold more fields (nodeName, nic); they are ignored.
type storeMeta struct {
	// BootID is the kernel boot id recorded by SetBootID.
	BootID string `json:"bootID,omitempty"`
	// Recovery is set while a recovery is unfinished (see BeginRecovery).
	Recovery *RecoveryMark `json:"recovery,omitempty"`
}

// The kinds of a RecoveryMark.
const (
	// RecoveryDamaged: Open found the files damaged and salvaged what was
	// intact (Options.Salvage).
	RecoveryDamaged = "damaged"
	// RecoveryLost: the store opened empty, but the node shows that it
	// held state in this boot (the daemon's judgement, see BeginRecovery).
	RecoveryLost = "lost"
)

// RecoveryMark records that the store lost changes, or may have, and that
// its owner has not finished rebuilding it. It is durable: an owner that
// dies during the recovery finds it again at the next Open.
type RecoveryMark struct {
	// Kind is RecoveryDamaged or RecoveryLost.
	Kind string `json:"kind"`
	// Reason says what was found, for people.
	Reason string `json:"reason"`
	// Since is when the recovery began.
	Since time.Time `json:"since"`
}

// Counts are the number of addresses per state.
type Counts struct {
	Free        int
	Assigned    int
	Cooling     int
	Releasing   int
	Quarantined int
}

// Total is the number of addresses in the store, all states together: the
// secondary addresses the store believes are on the NIC.
func (c Counts) Total() int {
	return c.Free + c.Assigned + c.Cooling + c.Releasing + c.Quarantined
}

// ReconcileResult is what Reconcile changed.
type ReconcileResult struct {
	// Added are addresses found on the NIC but unknown to the store, now free.
	Added []netip.Addr
	// Moved are addresses whose record now names the interface the cloud
	// reports them on (an old record without one, or an address moved).
	Moved []netip.Addr
	// Dropped are the records (as they were) whose address is no longer on
	// the NIC; they have been removed from the store. Only free and
	// releasing records are dropped: no pod holds them.
	Dropped []Record
	// Lost are the assigned and cooling records whose address is no longer
	// on the NIC, newly marked lost (LostAt set) and kept with their owner.
	Lost []Record
	// Found are addresses of lost records that the cloud shows again; they
	// are no longer lost.
	Found []netip.Addr
}

// Claim is a live attachment's hold on an address, as a witness outside the
// store records it (the pod's host veth).
type Claim struct {
	IP netip.Addr
	// Interface is the cloud's ID of the interface the address is on; empty
	// keeps the record's.
	Interface string
	Owner     Owner
	// Supersede lets the claim take the address from another attachment the
	// store has it assigned to (a record the daemon knows to be stale: a
	// damaged store's, whose owner has no veth while the claimant's veth
	// holds the address). That attachment is left without an address.
	Supersede bool
	// Seen is the store's Seq when the witness behind the claim was read;
	// an address changed since (a DEL's release while the witness still
	// showed the pod's veth) is not claimed. Zero: no such check.
	Seen uint64
}

// ClaimConflict is a claim that Claim refused: the store has the address
// assigned to another attachment, or another claim of the same call named
// it first.
type ClaimConflict struct {
	Claim Claim
	// Holder is the attachment that keeps the address.
	Holder Owner
}

// ClaimResult is what Claim changed.
type ClaimResult struct {
	// Rebuilt are the records the claims created or changed, as they are now.
	Rebuilt []Record
	// Previous are the records of Rebuilt as they were (State empty for an
	// address the store did not know), in the same order.
	Previous []Record
	// Displaced are addresses a claiming attachment held in the store
	// besides the one it claimed (as they were); they are quarantined now.
	Displaced []Record
	// Conflicts are the claims refused; their addresses stay as they were.
	Conflicts []ClaimConflict
	// Superseded are the assignments that superseding claims took their
	// address from (as they were).
	Superseded []Record
	// Stale are the claims not made because their address changed after
	// the witness was read (see Claim.Seen).
	Stale []Claim
}

// Stats describe the store's files. They are a copy.
type Stats struct {
	// Seq is the sequence number of the last durable change.
	Seq uint64
	// JournalBytes is the size of the journal since the last compaction.
	JournalBytes int64
	// Compactions counts successful compactions since Open.
	Compactions int
	// LastCompactionError is the error of the last failed compaction, if any;
	// a failed compaction loses nothing and is retried after the next change.
	LastCompactionError error
	// Recovery describes what Open found.
	Recovery Recovery
}

// Recovery describes what Open found and had to repair.
type Recovery struct {
	// Replayed is the number of journal records applied on top of the snapshot.
	Replayed int
	// TruncatedBytes is the size of the torn tail cleared from the journal
	// (up to its last non-zero byte): a record that a crash interrupted and
	// that was therefore never acknowledged.
	TruncatedBytes int64
	// Empty reports that the files held no state at all: no snapshot and
	// no journal record. A new store looks like this, and so does one whose
	// directory was deleted or whose journal was emptied or zeroed; only
	// the world outside the store can tell them apart.
	Empty bool
	// Damage says what was damaged, empty when nothing was. Open refuses a
	// damaged store unless Options.Salvage is set.
	Damage string
	// MovedAside are the damaged files, renamed next to the store's files
	// and kept for forensics (Options.Salvage).
	MovedAside []string
	// Salvaged is the number of records kept from the damaged files.
	Salvaged int
}

// Errors returned by the store. Check them with errors.Is.
var (
	// ErrNoFree: Assign found no free address.
	ErrNoFree = errors.New("no free address")
	// ErrUnknownIP: the address is not in the store.
	ErrUnknownIP = errors.New("address not in store")
	// ErrInvalidIP: an argument is not a valid address without zone.
	ErrInvalidIP = errors.New("invalid address")
	// ErrInvalidAttachment: the container ID or the interface name is empty.
	ErrInvalidAttachment = errors.New("invalid attachment: container id and interface name are required")
	// ErrLocked: another process (or another Open in this one) holds the store.
	ErrLocked = errors.New("store is locked by another process")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("store is closed")
	// ErrUnwritable: a write or sync of the store's files failed (a full
	// disk, an I/O error). The change was not made and is not on disk; the
	// store takes changes again once writes succeed (see Store.Probe).
	ErrUnwritable = errors.New("the store cannot write its files")
	// ErrSuperseded: a release was made before the attachment's latest
	// allocation, so it belongs to an earlier assignment; nothing changed.
	ErrSuperseded = errors.New("release made before the attachment's latest allocation")
	// ErrCorrupt: the files on disk are damaged beyond a torn tail, or their
	// content breaks the store's invariants. Open refuses them rather than
	// risk handing out one address twice.
	ErrCorrupt = errors.New("store files are corrupt")
)

// TransitionError reports a state change that the state machine forbids, for
// example MarkReleasing of an assigned address. Check it with errors.As.
type TransitionError struct {
	IP   netip.Addr
	From State
	// To is the state asked for; empty for a removal from the store.
	To State
}

func (e *TransitionError) Error() string {
	if e.To == "" {
		return fmt.Sprintf("address %s: cannot remove a %s address, only releasing ones", e.IP, e.From)
	}
	return fmt.Sprintf("address %s: illegal transition %s -> %s", e.IP, e.From, e.To)
}
