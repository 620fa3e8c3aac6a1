package rewriter

import (
	"context"
	"testing"

	"github.com/efficientgo/core/testutil"

	"github.com/lethe-project/lethe/tombstones"
)

// TestRunCallsThePhaseHook: crash tests stop a run at a phase through Config.AtPhase; the library
// never exits the process itself.
func TestRunCallsThePhaseHook(t *testing.T) {
	f := newFixture(t, 4)
	f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	var phases []string
	_, err := f.runner(t, Config{Threshold: 0.05, AtPhase: func(p string) { phases = append(phases, p) }}).Run(context.Background())
	testutil.Ok(t, err)
	one := []string{"download", "rewrite", "upload-meta", "mark"}
	testutil.Equals(t, append(one, one...), phases)
}
