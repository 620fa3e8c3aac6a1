package tombstones

import (
	"time"

	"github.com/oklog/ulid/v2"
)

// State is where a tombstone is in its life, derived from its objects and the clock.
type State string

const (
	// StatePending tombstones are masked and cancellable; the rewriter leaves them alone.
	StatePending State = "pending"
	// StateDue tombstones are masked and may be applied by the rewriter.
	StateDue State = "due"
	// StateCancelled tombstones were undone inside their undelete window; nothing masks them.
	StateCancelled State = "cancelled"
	// StateApplied tombstones no longer cover data in any live block; they are kept for audit.
	StateApplied State = "applied"
)

// Cancellation undoes a tombstone. It is an object of its own: the tombstone is never rewritten.
type Cancellation struct {
	Version   int       `json:"version"`
	ID        ulid.ULID `json:"id"`
	Tombstone ulid.ULID `json:"tombstone"`
	CreatedAt time.Time `json:"created_at"`
	Reason    string    `json:"reason,omitempty"`
	Author    string    `json:"author,omitempty"`
}

// Applied records that no live block holds data a tombstone covers any more.
type Applied struct {
	Version   int       `json:"version"`
	ID        ulid.ULID `json:"id"`
	Tombstone ulid.ULID `json:"tombstone"`
	CreatedAt time.Time `json:"created_at"`
	// Blocks are the blocks that were replaced by rewritten ones.
	Blocks []ulid.ULID `json:"blocks,omitempty"`
}

// Entry is a tombstone with the events recorded about it.
type Entry struct {
	*Tombstone
	// Cancellation is the earliest valid cancellation, if any.
	Cancellation *Cancellation
	// Applied is the earliest applied record, if any.
	Applied *Applied
}

// State returns the entry's state at now.
func (e *Entry) State(now time.Time) State {
	switch {
	case e.Cancellation != nil:
		return StateCancelled
	case e.Applied != nil:
		return StateApplied
	case now.Before(e.UndeleteUntil):
		return StatePending
	default:
		return StateDue
	}
}

// Masks reports whether queries must hide what the entry covers: every state but cancelled. Applied
// tombstones still mask, since an upstream with live data may hold samples they cover.
func (e *Entry) Masks() bool { return e.Cancellation == nil }

// Overdue reports whether the deadline has passed, after which the rewriter ignores the threshold.
func (e *Entry) Overdue(now time.Time) bool {
	return e.Cancellation == nil && e.Applied == nil && !now.Before(e.Deadline)
}

// Cancellable reports whether a cancellation written at now would take effect.
func (e *Entry) Cancellable(now time.Time) bool {
	return e.Cancellation == nil && e.Applied == nil && now.Before(e.UndeleteUntil)
}

// acceptCancellation applies a cancellation if it was made inside the undelete window; one written
// later (by a process with a skewed clock, say) is ignored, so it cannot undo work already applied.
func (e *Entry) acceptCancellation(c *Cancellation) bool {
	if !c.CreatedAt.Before(e.UndeleteUntil) {
		return false
	}
	if e.Cancellation == nil || c.CreatedAt.Before(e.Cancellation.CreatedAt) {
		e.Cancellation = c
	}
	return true
}

func (e *Entry) acceptApplied(a *Applied) {
	if e.Applied == nil || a.CreatedAt.Before(e.Applied.CreatedAt) {
		e.Applied = a
	}
}
