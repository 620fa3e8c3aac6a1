package rewriter

import (
	"context"
	"encoding/json"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/tombstones"
)

// TestRunRepairsACutShortMetaJSON: a worker killed while it wrote its new block's meta.json
// leaves it cut short beside the upload record (FILESYSTEM uploads are not atomic). The next run
// takes it for the partial upload it is, uploads the block again and finishes the job, instead of
// failing on the undecodable meta.json in every run from then on.
func TestRunRepairsACutShortMetaJSON(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	tb := f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	child := ChildID(f.ids[0], []ulid.ULID{tb.ID})
	for _, n := range []string{path.Join(child.String(), "chunks", "000001"), path.Join(child.String(), block.IndexFilename)} {
		testutil.Ok(t, f.bkt.Upload(ctx, n, strings.NewReader("cut short")))
	}
	testutil.Ok(t, f.bkt.Upload(ctx, path.Join(child.String(), block.MetaFilename), strings.NewReader(`{"ulid":"`+child.String()+`","minT`)))
	rec, err := json.Marshal(map[string]any{"block": child, "source": f.ids[0], "started": f.now.Add(-time.Hour)})
	testutil.Ok(t, err)
	testutil.Ok(t, f.bkt.Upload(ctx, uploadRecord(child), strings.NewReader(string(rec))))

	rep, err := f.runner(t, Config{Threshold: 0}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(rep.Bad), "bad: %v", rep.Bad)
	m, err := block.ReadMeta(ctx, f.bkt, child)
	testutil.Ok(t, err, "the new block's meta.json")
	testutil.Ok(t, complete(ctx, f.bkt, m))
	marked, err := f.bkt.Exists(ctx, path.Join(f.ids[0].String(), block.DeletionMarkFilename))
	testutil.Ok(t, err)
	testutil.Assert(t, marked, "the source is not marked for its replacement")

	rep, err = f.runner(t, Config{Threshold: 0}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(rep.Bad), "bad after a second run: %v", rep.Bad)
}
