package tombstones

import (
	"time"
)

// View is how a tombstone is shown to people and API clients: redacted values never appear, not
// even as digests, and times are rendered.
type View struct {
	ID            string        `json:"id"`
	State         State         `json:"state"`
	Matchers      []string      `json:"matchers"`
	Redacted      bool          `json:"redacted"`
	Start         string        `json:"start"`
	End           string        `json:"end"`
	StartMillis   int64         `json:"start_ms"`
	EndMillis     int64         `json:"end_ms"`
	CreatedAt     time.Time     `json:"created_at"`
	UndeleteUntil time.Time     `json:"undelete_until"`
	Deadline      time.Time     `json:"deadline"`
	Overdue       bool          `json:"overdue"`
	Reason        string        `json:"reason,omitempty"`
	Author        string        `json:"author,omitempty"`
	Cancellation  *Cancellation `json:"cancellation,omitempty"`
	Applied       *Applied      `json:"applied,omitempty"`
}

// NewView renders an entry at now.
func NewView(e *Entry, now time.Time) View {
	return View{
		ID:            e.ID.String(),
		State:         e.State(now),
		Matchers:      e.DisplayMatchers(),
		Redacted:      e.Redacted(),
		Start:         FormatMillis(e.Start),
		End:           FormatMillis(e.End),
		StartMillis:   e.Start,
		EndMillis:     e.End,
		CreatedAt:     e.CreatedAt,
		UndeleteUntil: e.UndeleteUntil,
		Deadline:      e.Deadline,
		Overdue:       e.Overdue(now),
		Reason:        e.Reason,
		Author:        e.Author,
		Cancellation:  e.Cancellation,
		Applied:       e.Applied,
	}
}
