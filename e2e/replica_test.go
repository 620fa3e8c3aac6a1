package e2e

// Tombstones that name the replica label ({replica="r0",...}) in front of a real Thanos stack
// whose two replicas differ (offset values, scrape gaps): they delete that replica's samples only,
// and Thanos' deduplication answers with the other replica's, as the ground truth stack does over
// blocks where only that replica's samples were left out. Every helper here starts with repl.

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
)

// replDeletions name the replica label in every way a matcher can, beside one that does not.
var replDeletions = []thxDeletion{
	{`http_requests_total{instance="web-2",replica="r0"}`, sapiT0 + 20*sapiMin, sapiT0 + 40*sapiMin},
	{`temperature{room="a",replica="r1"}`, sapiT0 - thxHour, sapiT0 + 3*thxHour},
	{`{room="b",replica!="r1"}`, sapiT0 + 70*sapiMin, sapiT0 + 90*sapiMin},
	{`{user_id="42",replica=~"r0|r1"}`, sapiT0 - thxHour, sapiT0 + 3*thxHour},
	{`http_requests_total{instance="web-1"}`, sapiT0 + 30*sapiMin, sapiT0 + 50*sapiMin},
}

// replBlock is sapiTestBlock with replicas that differ: r1's values are offset, r1 misses its
// samples from 00:50 to 01:00 and r0 its samples from 01:35 to 01:40, so which replica answers is
// visible in every answer.
var replBlock = sapiBlock{
	series: sapiSeries, histograms: sapiHistograms, mint: sapiT0, maxt: sapiT0 + 2*thxHour, step: sapiStep,
	byReplica: func(replica string, i int, ts int64) (float64, bool) {
		m := (ts - sapiT0) / sapiMin
		v := sapiValue(i, ts)
		if replica == "r1" {
			return v + 3, m < 50 || m >= 60
		}
		return v, m < 95 || m >= 100
	},
}

// TestReplicaTombstonesInFrontOfThanosQuery: the battery through lethe in front of Thanos Query
// (--upstream.store), in the StoreAPI mode's own HTTP API (--store.endpoint), and through the
// StoreAPI filter (Thanos Query in front of lethe) equals the ground truth request by request.
func TestReplicaTombstonesInFrontOfThanosQuery(t *testing.T) {
	masked, truth := replBuckets(t, replBlock, replDeletions)
	_, maskedStore := sapiStore(t, masked)
	_, truthStore := sapiStore(t, truth)
	want, _ := ssrcQuerier(t, truthStore, `count(temperature)`, sapiT0+thxHour)
	requests := ssrcBattery()

	t.Run("upstream.store", func(t *testing.T) {
		_, directGRPC := ssrcQuerier(t, maskedStore, `count(temperature)`, sapiT0+thxHour)
		viaLethe := ssrcProxy(t, masked, directGRPC)
		same := ssrcCompare(t, viaLethe, want, requests)
		t.Logf("%d of %d requests through lethe-proxy --upstream.store equal the ground truth", same, len(requests))
	})
	t.Run("store.endpoint", func(t *testing.T) {
		viaLethe := ssrcStoreModeProxy(t, masked, maskedStore)
		same := ssrcCompare(t, viaLethe, want, requests)
		t.Logf("%d of %d requests through lethe-proxy --store.endpoint equal the ground truth", same, len(requests))
	})
	t.Run("filter", func(t *testing.T) {
		lethe := sapiFilter(t, masked, &sapiClock{now: time.Now()}, maskedStore)
		viaLethe, _ := ssrcQuerier(t, lethe, `count(temperature)`, sapiT0+thxHour)
		same := sapiCompare(t, viaLethe, want, requests)
		t.Logf("%d of %d requests through Thanos Query in front of lethe's StoreAPI filter equal the ground truth", same, len(requests))
	})

	// Without lethe the masked stack answers otherwise: the battery sees the deletions.
	direct, _ := ssrcQuerier(t, maskedStore, `count(temperature)`, sapiT0+thxHour)
	t.Run("upstream.url", func(t *testing.T) {
		// Thanos Query's answers are deduplicated: lethe told the replica label fails what a
		// tombstone on it may meet, and answers the rest as the truth.
		viaLethe := startProxy(t, masked.dir, "--upstream.url="+direct.URL, "--upstream.replica-label=replica")
		failed := 0
		for _, r := range requests {
			resp, err := http.Get(viaLethe.URL + r.path + "?" + r.params.Encode())
			testutil.Ok(t, err)
			body, err := io.ReadAll(resp.Body)
			testutil.Ok(t, resp.Body.Close())
			testutil.Ok(t, err)
			if resp.StatusCode != http.StatusOK {
				testutil.Assert(t, strings.Contains(string(body), "names a replica label (replica)") && strings.Contains(string(body), "--upstream.store"),
					"%s %v: %d %s", r.path, r.params, resp.StatusCode, body)
				failed++
				continue
			}
			testutil.Equals(t, sapiAnswer(t, want, r.path, r.params), normalizeAnswer(t, resp.StatusCode, body, nil), "%s %v", r.path, r.params)
		}
		t.Logf("%d of %d requests through lethe-proxy --upstream.url --upstream.replica-label fail; the others equal the ground truth", failed, len(requests))
		testutil.Assert(t, failed > 0, "no request met a tombstone on the replica label")
	})
	differ := 0
	for _, r := range requests {
		if sapiAnswer(t, direct, r.path, r.params) != sapiAnswer(t, want, r.path, r.params) {
			differ++
		}
	}
	t.Logf("%d of %d requests differ between the masked stack asked directly and the ground truth", differ, len(requests))
	testutil.Assert(t, differ > 0, "the masked stack answers as the truth without lethe: the test shows nothing")
}

// replBuckets writes the block for replicas r0 and r1 into two buckets: as it is into the masked
// one, with the deletions registered as tombstones; into the truth as Prometheus' own deletion
// leaves it: each replica's block gets the deletions that hold for its external labels through
// tsdb's Block.Delete (delete_series), and Block.CleanTombstones rewrites it (clean_tombstones).
// Thanos' deduplication reads chunks, not replicas: where both replicas lack samples it may
// switch by chunk layout, so the truth must have the chunks Prometheus itself writes.
func replBuckets(t *testing.T, blk sapiBlock, dels []thxDeletion) (masked, truth cliBucket) {
	t.Helper()
	masked, truth = thxNewBucket(t), thxNewBucket(t)
	none := func(labels.Labels, int64) bool { return false }
	mbkt, err := filesystem.NewBucket(masked.dir)
	testutil.Ok(t, err)
	tbkt, err := filesystem.NewBucket(truth.dir)
	testutil.Ok(t, err)
	ctx := context.Background()
	for _, r := range []string{"r0", "r1"} {
		sapiWrite(t, mbkt, r, blk, none)
		bdir, meta := sapiWriteDir(t, r, blk, none)
		cleaned := replDeleteAndClean(t, bdir, sapiExt(r), dels)
		raw, err := os.ReadFile(filepath.Join(cleaned, block.MetaFilename))
		testutil.Ok(t, err)
		cmeta, err := block.DecodeMeta(raw)
		testutil.Ok(t, err)
		cmeta.MaxTime, cmeta.Thanos = meta.MaxTime, meta.Thanos
		testutil.Ok(t, block.Upload(ctx, tbkt, cleaned, cmeta))
	}
	for _, d := range dels {
		thxTombstone(t, masked, d)
	}
	return masked, truth
}

// replDeleteAndClean deletes from the block at dir what dels delete of a block with external
// labels ext, with Prometheus' tsdb, and returns the directory of the block CleanTombstones writes.
// A matcher on an external label is decided by ext, as Thanos does, and the rest go to Delete.
func replDeleteAndClean(t *testing.T, dir string, ext map[string]string, dels []thxDeletion) string {
	t.Helper()
	ctx := context.Background()
	logger := slog.New(slog.DiscardHandler)
	pb, err := tsdb.OpenBlock(logger, dir, chunkenc.NewPool(), nil)
	testutil.Ok(t, err)
	defer pb.Close()
	deleted := false
	for _, sel := range thxSelectors(t, dels) {
		var ms []*labels.Matcher
		holds := true
		for _, m := range sel.ms {
			if v, isExt := ext[m.Name]; isExt {
				holds = holds && m.Matches(v)
				continue
			}
			ms = append(ms, m)
		}
		if holds {
			testutil.Ok(t, pb.Delete(ctx, sel.start, sel.end, ms...))
			deleted = true
		}
	}
	if !deleted {
		return dir
	}
	comp, err := tsdb.NewLeveledCompactor(ctx, nil, logger, []int64{2 * thxHour}, chunkenc.NewPool(), nil)
	testutil.Ok(t, err)
	dest := t.TempDir()
	ids, _, err := pb.CleanTombstones(dest, comp)
	testutil.Ok(t, err)
	testutil.Equals(t, 1, len(ids), "CleanTombstones wrote %v", ids)
	return filepath.Join(dest, ids[0].String())
}
