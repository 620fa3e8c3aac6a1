package e2e

// The rewriter benchmarks of `make bench`: lethe-rewriter timed against what a user would run
// instead, side by side in one run, on the same Thanos block with the same deletions.
//
//	rewrite/lethe-vs-thanos   `lethe-rewriter run` vs `thanos tools bucket rewrite
//	                          --rewrite.to-delete-config`, each on a fresh copy of the bucket
//	rewrite/lethe-vs-copy     `lethe-rewriter run` vs copying the block's objects bucket to bucket
//	                          through objstore (every byte read and written once: the physical
//	                          limit of any rewrite that leaves a new block beside the old one)
//	rewrite4x/lethe-vs-thanos the same as rewrite/lethe-vs-thanos on the 4x block
//	rewrite4x/lethe-vs-copy   the same as rewrite/lethe-vs-copy on the 4x block
//	memory/lethe4x-vs-lethe1x `lethe-rewriter run` on a block of 4x the series vs on the 1x block,
//	                          at the same --batch.series: peak memory should stay flat, and the
//	                          time ratio is the 4x/1x time ratio (linear: about 4)
//
// The bucket is a FILESYSTEM bucket holding one 2h Thanos block (100,000 series, a sample every
// 15s, node-exporter-like values: issue 16's block; the 4x block has four times the series;
// LETHE_REWRITE_BENCH_SIZES=25000,100000 sets the series of both blocks, each a multiple of 500)
// and three due tombstones: a handful of series
// deleted whole, and two time ranges over many series, so that the rewrite copies chunks,
// re-encodes those a range cuts and drops those it covers. Thanos gets the same deletions as its
// deletion requests, and runs with its default flags (change log on), as a user would type the
// command; it leaves the source block in place (no --delete-blocks), where lethe marks it.
// lethe-rewriter runs with --threshold 0 and --nice=false: its default nice 19 would make it lose
// to whatever else the machine runs, and Thanos runs at normal priority.
//
// Each iteration copies the bucket's directory afresh for each side and syncs it to disk (not
// timed), runs both sides, alternating which goes first so that whatever else the machine does
// slows both alike, and
// records each side's wall time and peak memory. Each leaf reports the median time of each side
// (lethe-ms, baseline-ms), the median of the paired time ratios (lethe/baseline), each process'
// peak RSS (VmHWM, which counts the pages of mmapped block files it touched) and peak anonymous
// RSS (RssAnon: heap and stacks, what it cannot give back), both polled from /proc, and the median
// paired ratio of each (RSS-lethe/baseline, anon-lethe/baseline), and each side's CPU time (user
// and system, from the child's rusage) per GB of source block (lethe-cpu-s/GB,
// baseline-cpu-s/GB). The copy runs in the benchmark's process, on one locked OS thread: it has
// no memory figures, and its CPU time is that thread's rusage.
// LETHE_BENCH_PERF=<dir> runs every lethe-rewriter under `perf record -g`, its profiles written
// to dir (a profiling aid: the memory figures are then perf's, the times include its overhead).
// LETHE_REWRITE_BENCH_CACHE=<dir> keeps the template buckets in dir and reuses them in later runs
// (writing a 400,000-series block takes minutes); without it the blocks are written once per
// `go test -bench` run, by BenchmarkRewrite itself, and the
// outputs of the first iteration of rewrite/lethe-vs-thanos are checked after the timing: lethe's
// new block and Thanos' new block must hold exactly the samples the deletions leave, series by
// series, value by value. tools/benchtable turns the output into the table of ratios.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash"
	"hash/fnv"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/thanos-io/objstore"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/tombstones"
)

const (
	// A block's series = 2 jobs x rbenchInstances x len(rbenchStatuses) x its users.
	rbenchSeriesPerUser = 2 * rbenchInstances * 5
	// rbenchSizes are the series of the 1x and the 4x block unless LETHE_REWRITE_BENCH_SIZES says.
	rbenchSizes     = "100000,400000"
	rbenchInstances = 50
	rbenchStep      = int64(15_000)
	rbenchEnd       = blockStart + 7_200_000 // exclusive
	// rbenchBatch is lethe-rewriter's --batch.series for both blocks (its default).
	rbenchBatch = 10_000
	// rbenchPollEvery is how often a process' RssAnon is read while it runs.
	rbenchPollEvery = 5 * time.Millisecond
	rbenchTimeout   = 10 * time.Minute
)

var rbenchStatuses = []string{"200", "201", "404", "429", "500"}

// rbenchAt is a time of the block: blockStart plus d.
func rbenchAt(d time.Duration) int64 { return blockStart + d.Milliseconds() }

// rbenchDeletions are registered as lethe tombstones and given to Thanos as deletion requests.
// Head chunks are cut every 120 samples (30 minutes at 15s): the two ranges cut chunks in the
// middle, which are re-encoded, and the longer one covers a chunk whole, which is dropped; the
// rest is copied.
var rbenchDeletions = []struct {
	matcher    string
	start, end int64 // inclusive milliseconds
}{
	{`{user_id="7",status="500"}`, blockStart, rbenchEnd - 1},                            // a handful of series across the block, everything
	{`{job="web",status="404"}`, rbenchAt(25 * time.Minute), rbenchAt(75 * time.Minute)}, // 10% of the series, 50 minutes
	{`{instance="api-3"}`, rbenchAt(95 * time.Minute), rbenchAt(110 * time.Minute)},      // one instance, 15 minutes
}

// rbenchData returns the series of the block with users users per (job, instance, status), and
// their values, node-exporter-like in how they compress (about 4.5 bytes a sample, as issue 16's
// block): a quarter are counters growing by whole steps, a quarter float counters (CPU seconds)
// growing by a jittered fraction of the step, a quarter gauges moving by pages (memory bytes),
// and a quarter gauges in quarter steps (temperatures).
func rbenchData(users int) ([]labels.Labels, func(int, int64) float64) {
	var series []labels.Labels
	for _, job := range []string{"api", "web"} {
		for i := 0; i < rbenchInstances; i++ {
			inst := fmt.Sprintf("%s-%d", job, i)
			for _, status := range rbenchStatuses {
				for u := 0; u < users; u++ {
					series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", job, "instance", inst,
						"status", status, "user_id", strconv.Itoa(u)))
				}
			}
		}
	}
	return series, func(i int, ts int64) float64 {
		n := (ts - blockStart) / rbenchStep
		h := uint64(i)*0x9E3779B97F4A7C15 ^ uint64(n)*0xC2B2AE3D27D4EB4F
		h ^= h >> 29
		h *= 0xBF58476D1CE4E5B9
		h ^= h >> 32
		switch i % 4 {
		case 0:
			return float64(n*int64(1+i%13)) + float64(n%7)*0.25
		case 1:
			return float64(n)*15*0.01*float64(1+i%37) + float64(h%100_000)/10_000_000
		case 2:
			return 1e9 + float64(h%65536)*4096
		default:
			return 40 + float64(h%256)/4
		}
	}
}

// rbenchBlock is one source block, uploaded to a template bucket that every run copies.
type rbenchBlock struct {
	name     string
	template string // the bucket's directory: the block and the tombstones
	id       ulid.ULID
	series   int
	samples  int64
	bytes    int64 // the block's objects
	// want is every series' samples after the deletions.
	want map[string]rbenchDigest
}

type rbenchFixture struct {
	lethe, thanos string // binaries
	one, four     *rbenchBlock
	deleteConfig  string // Thanos' --rewrite.to-delete-config
	tmp           string
	summary       string
}

func BenchmarkRewrite(b *testing.B) {
	fx := newRbenchFixture(b)
	b.Run("rewrite/lethe-vs-thanos", func(b *testing.B) {
		fx.log(b)
		var first [2]string
		fx.compare(b, [2]rbenchSide{
			fx.side("lethe", fx.one, fx.runLethe),
			fx.side("thanos", fx.one, fx.runThanos),
		}, func(i int, buckets [2]string) bool {
			if i == 0 {
				first = buckets
				return true
			}
			return false
		})
		// The timed work was right: both new blocks hold exactly what the deletions leave.
		for s, name := range []string{"lethe-rewriter", "thanos tools bucket rewrite"} {
			got := rbenchNewBlockSamples(b, first[s], fx.one.id)
			if diff := rbenchDiff(fx.one.want, got); diff != "" {
				b.Fatalf("%s's new block does not hold the samples the deletions leave: %s", name, diff)
			}
		}
		b.Logf("checked: lethe's and thanos' new blocks both hold exactly the %d series and %d samples the deletions leave",
			len(fx.one.want), rbenchCount(fx.one.want))
	})
	b.Run("rewrite/lethe-vs-copy", func(b *testing.B) {
		fx.log(b)
		fx.compare(b, [2]rbenchSide{
			fx.side("lethe", fx.one, fx.runLethe),
			fx.side("copy", fx.one, fx.copyBlock),
		}, nil)
	})
	b.Run("rewrite4x/lethe-vs-thanos", func(b *testing.B) {
		fx.log(b)
		fx.compare(b, [2]rbenchSide{
			fx.side("lethe", fx.four, fx.runLethe),
			fx.side("thanos", fx.four, fx.runThanos),
		}, nil)
	})
	b.Run("rewrite4x/lethe-vs-copy", func(b *testing.B) {
		fx.log(b)
		fx.compare(b, [2]rbenchSide{fx.side("lethe", fx.four, fx.runLethe), fx.side("copy", fx.four, fx.copyBlock)}, nil)
	})
	b.Run("memory/lethe4x-vs-lethe1x", func(b *testing.B) {
		fx.log(b)
		fx.compare(b, [2]rbenchSide{
			fx.side("lethe4x", fx.four, fx.runLethe),
			fx.side("lethe1x", fx.one, fx.runLethe),
		}, nil)
	})
}

// log logs the set-up summary once, in the first leaf: a benchmark with sub-benchmarks shows its
// own log only with -v.
func (fx *rbenchFixture) log(b *testing.B) {
	if fx.summary != "" {
		b.Log(fx.summary)
		fx.summary = ""
	}
}

// rbenchSide is one side of a comparison: run does the work once and returns what it used and
// the bucket directory it left (removed after the iteration unless keep says otherwise).
type rbenchSide struct {
	name string
	// gb is the size of the block it rewrites or copies, in GB (10^9 bytes).
	gb  float64
	run func() (rbenchUsage, string, error)
}

// side is the side name that runs run on blk.
func (fx *rbenchFixture) side(name string, blk *rbenchBlock, run func(*rbenchBlock) (rbenchUsage, string, error)) rbenchSide {
	return rbenchSide{name: name, gb: float64(blk.bytes) / 1e9, run: func() (rbenchUsage, string, error) { return run(blk) }}
}

// rbenchUsage is one run's wall time and peak memory; memory is NaN for work done in the
// benchmark's own process.
type rbenchUsage struct {
	wall           time.Duration
	maxRSS, anon   float64 // MiB
	cpu            float64 // user + system seconds
	chunksCopied   int
	chunksReencode int
	chunksDropped  int
}

// compare runs both sides once per iteration, alternately (lethe first on even iterations, the
// baseline first on odd ones), and reports the medians. keep, if set, is told each iteration's two
// buckets and keeps them when it returns true.
func (fx *rbenchFixture) compare(b *testing.B, sides [2]rbenchSide, keep func(i int, buckets [2]string) bool) {
	var (
		walls  [2][]time.Duration
		rss    [2][]float64
		anon   [2][]float64
		cpu    [2][]float64
		ratios [3][]float64 // time, RSS, anon
		last   rbenchUsage
	)
	for i := 0; b.Loop(); i++ {
		var (
			use     [2]rbenchUsage
			buckets [2]string
		)
		for k := range sides {
			s := k
			if i%2 == 1 {
				s = 1 - k
			}
			u, dir, err := sides[s].run()
			if err != nil {
				b.Fatalf("%s: %v", sides[s].name, err)
			}
			use[s], buckets[s] = u, dir
		}
		if keep == nil || !keep(i, buckets) {
			for _, d := range buckets {
				if err := os.RemoveAll(d); err != nil {
					b.Fatal(err)
				}
			}
		}
		for s := range sides {
			walls[s] = append(walls[s], use[s].wall)
			rss[s] = append(rss[s], use[s].maxRSS)
			anon[s] = append(anon[s], use[s].anon)
			cpu[s] = append(cpu[s], use[s].cpu/sides[s].gb)
		}
		ratios[0] = append(ratios[0], float64(use[0].wall)/float64(use[1].wall))
		ratios[1] = append(ratios[1], use[0].maxRSS/use[1].maxRSS)
		ratios[2] = append(ratios[2], use[0].anon/use[1].anon)
		last = use[0]
	}
	b.StopTimer()
	b.ReportMetric(dashMedianDuration(walls[0]).Seconds()*1000, "lethe-ms")
	b.ReportMetric(dashMedianDuration(walls[1]).Seconds()*1000, "baseline-ms")
	b.ReportMetric(dashMedian(ratios[0]), "lethe/baseline")
	for _, m := range []struct {
		unit string
		v    []float64
	}{
		{"lethe-peak-RSS-MiB", rss[0]}, {"baseline-peak-RSS-MiB", rss[1]}, {"RSS-lethe/baseline", ratios[1]},
		{"lethe-peak-anon-MiB", anon[0]}, {"baseline-peak-anon-MiB", anon[1]}, {"anon-lethe/baseline", ratios[2]},
		{"lethe-cpu-s/GB", cpu[0]}, {"baseline-cpu-s/GB", cpu[1]},
	} {
		if v := dashMedian(m.v); !math.IsNaN(v) {
			b.ReportMetric(v, m.unit)
		}
	}
	b.Logf("%s: %v per run (median of %d), %s: %v; chunks copied %d, re-encoded %d, dropped %d", sides[0].name,
		dashMedianDuration(walls[0]).Round(time.Millisecond), len(walls[0]), sides[1].name, dashMedianDuration(walls[1]).Round(time.Millisecond),
		last.chunksCopied, last.chunksReencode, last.chunksDropped)
}

// fresh copies a template bucket into a new directory and returns it with its objstore config.
func (fx *rbenchFixture) fresh(blk *rbenchBlock, name string) (string, string, error) {
	dir, err := os.MkdirTemp(fx.tmp, name+"-")
	if err != nil {
		return "", "", err
	}
	bucket := filepath.Join(dir, "bucket")
	if err := os.CopyFS(bucket, os.DirFS(blk.template)); err != nil {
		return "", "", err
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return "", "", err
	}
	// The copy's dirty pages go to disk now, untimed: written back during the run, they would
	// throttle the timed side's own writes.
	syscall.Sync()
	return dir, "type: FILESYSTEM\nconfig: {directory: " + strconv.Quote(bucket) + "}", nil
}

// runLethe runs `lethe-rewriter run` on a fresh copy of blk's bucket and checks that it replaced
// the block.
func (fx *rbenchFixture) runLethe(blk *rbenchBlock) (rbenchUsage, string, error) {
	dir, conf, err := fx.fresh(blk, "lethe")
	if err != nil {
		return rbenchUsage{}, dir, err
	}
	// --nice=false: the job's default nice 19 would make lethe lose against anything else the
	// machine runs; Thanos runs at the normal priority.
	u, logs, err := rbenchExec(fx.lethe, dir, "--objstore.config="+conf, "run", "--threshold=0",
		"--batch.series="+strconv.Itoa(rbenchBatch), "--tmp.dir="+filepath.Join(dir, "tmp"), "--nice=false")
	if err != nil {
		return u, dir, err
	}
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(nil, 1<<20)
	rewritten := false
	for sc.Scan() {
		var l struct {
			Msg      string `json:"msg"`
			Copied   int    `json:"chunks_copied"`
			Reencode int    `json:"chunks_reencoded"`
			Dropped  int    `json:"chunks_dropped"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "block rewritten" {
			rewritten = true
			u.chunksCopied, u.chunksReencode, u.chunksDropped = l.Copied, l.Reencode, l.Dropped
		}
	}
	if !rewritten {
		return u, dir, fmt.Errorf("lethe-rewriter rewrote nothing; log:\n%s", dashClip(logs))
	}
	if _, err := os.Stat(filepath.Join(dir, "bucket", blk.id.String(), block.DeletionMarkFilename)); err != nil {
		return u, dir, fmt.Errorf("lethe-rewriter did not mark the source: %v", err)
	}
	return u, dir, nil
}

// runThanos runs `thanos tools bucket rewrite` with the same deletions on a fresh copy of blk's
// bucket. It leaves the source in place (no --delete-blocks): marking it is a few bytes.
func (fx *rbenchFixture) runThanos(blk *rbenchBlock) (rbenchUsage, string, error) {
	dir, conf, err := fx.fresh(blk, "thanos")
	if err != nil {
		return rbenchUsage{}, dir, err
	}
	u, logs, err := rbenchExec(fx.thanos, dir, "tools", "bucket", "rewrite", "--objstore.config="+conf, "--id="+blk.id.String(),
		"--rewrite.to-delete-config="+fx.deleteConfig, "--no-dry-run", "--tmp.dir="+filepath.Join(dir, "tmp"))
	if err != nil {
		return u, dir, err
	}
	if !strings.Contains(logs, "msg=uploaded") {
		return u, dir, fmt.Errorf("thanos uploaded nothing; log:\n%s", dashClip(logs))
	}
	return u, dir, nil
}

// copyBlock copies blk's objects from a fresh copy of its bucket to an empty bucket through
// objstore, reading and writing every byte once.
func (fx *rbenchFixture) copyBlock(blk *rbenchBlock) (rbenchUsage, string, error) {
	dir, _, err := fx.fresh(blk, "copy")
	if err != nil {
		return rbenchUsage{}, dir, err
	}
	u := rbenchUsage{maxRSS: math.NaN(), anon: math.NaN()}
	src, err := filesystem.NewBucket(filepath.Join(dir, "bucket"))
	if err != nil {
		return u, dir, err
	}
	dst, err := filesystem.NewBucket(filepath.Join(dir, "copy"))
	if err != nil {
		return u, dir, err
	}
	ctx := context.Background()
	var n int64
	// The copy's CPU time is its thread's: it runs on this locked thread only.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var r0, r1 syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &r0); err != nil {
		return u, dir, err
	}
	t0 := time.Now()
	err = src.Iter(ctx, blk.id.String()+"/", func(name string) error {
		rc, err := src.Get(ctx, name)
		if err != nil {
			return err
		}
		defer rc.Close()
		cr := &rbenchCounter{r: rc}
		if err := dst.Upload(ctx, name, cr); err != nil {
			return err
		}
		n += cr.n
		return nil
	}, objstore.WithRecursiveIter())
	u.wall = time.Since(t0)
	if rerr := syscall.Getrusage(rusageThread, &r1); rerr != nil && err == nil {
		err = rerr
	}
	u.cpu = time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano()).Seconds()
	if err == nil && n != blk.bytes {
		err = fmt.Errorf("copied %d bytes of a %d-byte block", n, blk.bytes)
	}
	return u, dir, err
}

// rusageThread is Linux' RUSAGE_THREAD: getrusage of the calling thread.
const rusageThread = 1

type rbenchCounter struct {
	r io.Reader
	n int64
}

func (c *rbenchCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// rbenchExec runs bin in dir and returns its wall time, its peak RSS (VmHWM) and peak RssAnon,
// and its output; a non-zero exit is an error. Both peaks are read from /proc/<pid>/status every
// rbenchPollEvery while it runs (VmHWM is a high-water mark, so only growth in its last few
// milliseconds could be missed). The kernel's ru_maxrss would be exact but is useless here: a
// child of a Go process starts from the parent's high-water mark (it is forked sharing the
// parent's memory), and this process held the block generator's gigabytes.
func rbenchExec(bin, dir string, args ...string) (rbenchUsage, string, error) {
	u := rbenchUsage{}
	ctx, cancel := context.WithTimeout(context.Background(), rbenchTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	if prof := os.Getenv("LETHE_BENCH_PERF"); prof != "" && filepath.Base(bin) == "lethe-rewriter" {
		// Profiling aid: run lethe-rewriter under perf record (its memory figures are then perf's).
		cmd = exec.CommandContext(ctx, "perf", append([]string{"record", "-g", "-o", filepath.Join(prof, fmt.Sprintf("perf-%d.data", time.Now().UnixNano())), "--", bin}, args...)...)
	}
	var out bytes.Buffer
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, &out, &out
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return u, "", err
	}
	stop, polled := make(chan struct{}), make(chan [2]float64)
	go func() {
		status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
		var peak [2]float64 // VmHWM, RssAnon in KiB
		tick := time.NewTicker(rbenchPollEvery)
		defer tick.Stop()
		for {
			if raw, err := os.ReadFile(status); err == nil {
				for _, line := range strings.Split(string(raw), "\n") {
					f := strings.Fields(line)
					if len(f) != 3 || f[2] != "kB" {
						continue
					}
					for i, name := range []string{"VmHWM:", "RssAnon:"} {
						if f[0] == name {
							if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
								peak[i] = max(peak[i], kb)
							}
						}
					}
				}
			}
			select {
			case <-stop:
				polled <- peak
				return
			case <-tick.C:
			}
		}
	}()
	err := cmd.Wait()
	u.wall = time.Since(t0)
	if cmd.ProcessState != nil {
		u.cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	}
	close(stop)
	peak := <-polled
	u.maxRSS, u.anon = peak[0]/1024, peak[1]/1024
	if err != nil {
		return u, out.String(), fmt.Errorf("%s %s: %v; output:\n%s", filepath.Base(bin), strings.Join(args[:min(len(args), 4)], " "), err, dashClip(out.String()))
	}
	if u.maxRSS == 0 || u.anon == 0 {
		return u, out.String(), fmt.Errorf("%s: no memory figures from /proc (ran %v)", filepath.Base(bin), u.wall)
	}
	return u, out.String(), nil
}

func newRbenchFixture(b *testing.B) *rbenchFixture {
	b.Helper()
	began := time.Now()
	fx := &rbenchFixture{lethe: binaries.rewriter, thanos: rbenchThanosPath(b), tmp: b.TempDir()}
	if fx.lethe == "" {
		b.Fatal("no lethe-rewriter binary (TestMain builds it)")
	}
	if err := checkExecutable(fx.lethe); err != nil {
		b.Fatal(err)
	}

	// Thanos' deletion requests: one per tombstone, the same interval.
	var conf strings.Builder
	for _, d := range rbenchDeletions {
		fmt.Fprintf(&conf, "- matchers: '%s'\n  intervals: [{mint: %d, maxt: %d}]\n", d.matcher, d.start, d.end)
	}
	fx.deleteConfig = conf.String()

	users, err := rbenchUsers()
	if err != nil {
		b.Fatal(err)
	}
	// The two blocks, written at once (2 cores; the 4x one takes the longest).
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, name := range []string{"1x", "4x"} {
		blk := &rbenchBlock{name: name}
		if i == 0 {
			fx.one = blk
		} else {
			fx.four = blk
		}
		wg.Go(func() { errs[i] = fx.writeBlock(blk, users[i], i == 0) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	debug.FreeOSMemory()
	affected, deleted := 0, int64(0)
	for _, d := range fx.one.want {
		if d.n < int64(rbenchEnd-blockStart)/rbenchStep {
			affected++
		}
	}
	deleted = fx.one.samples - rbenchCount(fx.one.want)
	fx.summary = fmt.Sprintf("set-up in %v: 1x block %d series, %d samples, %.1f MiB; 4x block %d series, %d samples, %.1f MiB; "+
		"%d tombstones touching %d series of the 1x block, %d samples deleted (%.2f%%); --batch.series %d",
		time.Since(began).Round(time.Millisecond), fx.one.series, fx.one.samples, float64(fx.one.bytes)/(1<<20),
		fx.four.series, fx.four.samples, float64(fx.four.bytes)/(1<<20), len(rbenchDeletions), affected, deleted,
		100*float64(deleted)/float64(fx.one.samples), rbenchBatch)
	return fx
}

// rbenchUsers returns the users per (job, instance, status) of the 1x and the 4x block, from
// LETHE_REWRITE_BENCH_SIZES or rbenchSizes.
func rbenchUsers() ([2]int, error) {
	var users [2]int
	sizes := os.Getenv("LETHE_REWRITE_BENCH_SIZES")
	if sizes == "" {
		sizes = rbenchSizes
	}
	f := strings.Split(sizes, ",")
	if len(f) != 2 {
		return users, fmt.Errorf("LETHE_REWRITE_BENCH_SIZES=%q: want the series of the 1x and the 4x block, as 100000,400000", sizes)
	}
	for i := range f {
		n, err := strconv.Atoi(strings.TrimSpace(f[i]))
		if err != nil || n <= 0 || n%rbenchSeriesPerUser != 0 {
			return users, fmt.Errorf("LETHE_REWRITE_BENCH_SIZES=%q: %q is not a positive multiple of %d series", sizes, f[i], rbenchSeriesPerUser)
		}
		users[i] = n / rbenchSeriesPerUser
	}
	return users, nil
}

// rbenchCacheFormat names the cached template buckets: a change to the data, the deletions or
// the layout of the template changes it.
const rbenchCacheFormat = "v3"

// writeBlock writes the block of users users per (job, instance, status), uploads it to a new
// template bucket as a Thanos block and registers the tombstones there, due at once. With
// LETHE_REWRITE_BENCH_CACHE set, a template bucket written there by an earlier run is reused.
// check computes the samples the deletions leave, for the check of the outputs.
func (fx *rbenchFixture) writeBlock(blk *rbenchBlock, users int, check bool) error {
	ctx := context.Background()
	series, value := rbenchData(users)
	blk.template = filepath.Join(fx.tmp, "template-"+blk.name)
	cache := os.Getenv("LETHE_REWRITE_BENCH_CACHE")
	if cache != "" {
		blk.template = filepath.Join(cache, fmt.Sprintf("rewrite-%s-%d", rbenchCacheFormat, len(series)))
	}
	done := filepath.Join(blk.template, "..", filepath.Base(blk.template)+".done")
	if _, err := os.Stat(done); cache == "" || err != nil {
		if err := fx.writeTemplate(ctx, blk.template, blk.name, series, value); err != nil {
			return err
		}
		if cache != "" {
			if err := os.WriteFile(done, nil, 0o644); err != nil {
				return err
			}
		}
	}
	bkt, err := filesystem.NewBucket(blk.template)
	if err != nil {
		return err
	}
	l, err := block.List(ctx, bkt)
	if err != nil {
		return err
	}
	if len(l.Blocks) != 1 {
		return fmt.Errorf("template bucket %s: %d blocks, want 1", blk.template, len(l.Blocks))
	}
	meta := l.Blocks[0]
	blk.id, blk.series, blk.samples = meta.ULID, len(series), int64(meta.Stats.NumSamples)
	if int(meta.Stats.NumSeries) != len(series) {
		return fmt.Errorf("template bucket %s: block of %d series, want %d", blk.template, meta.Stats.NumSeries, len(series))
	}
	if err := filepath.WalkDir(filepath.Join(blk.template, meta.ULID.String()), func(_ string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		blk.bytes += info.Size()
		return err
	}); err != nil {
		return err
	}
	if check { // only the 1x block's outputs are checked
		blk.want, err = rbenchExpected(series, value)
	}
	return err
}

// writeTemplate writes the block of series into a new template bucket at dir, with the
// tombstones, due at once.
func (fx *rbenchFixture) writeTemplate(ctx context.Context, dir, name string, series []labels.Labels, value func(int, int64) float64) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	meta, bdir, err := rbenchWriteBlock(ctx, filepath.Join(fx.tmp, "blocks-"+name), series, value, map[string]string{"cluster": "bench", "replica": "0"})
	if err != nil {
		return err
	}
	bkt, err := filesystem.NewBucket(dir)
	if err != nil {
		return err
	}
	if err := block.Upload(ctx, bkt, bdir, meta); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Dir(bdir)); err != nil {
		return err
	}
	store := tombstones.NewStore(bkt, nil)
	zero := time.Duration(0)
	for _, d := range rbenchDeletions {
		if _, err := store.Add(ctx, tombstones.Spec{Selectors: []string{d.matcher}, Start: &d.start, End: &d.end,
			UndeleteWindow: &zero, MaxWait: &zero, Reason: "benchmark", Author: "bench"}); err != nil {
			return err
		}
	}
	return nil
}

// rbenchChunkSamples is where the block's chunks are cut, as Prometheus' head cuts them at a
// regular step: every 120 samples.
const rbenchChunkSamples = 120

// rbenchWriteBlock writes the block of series (a sample every rbenchStep from blockStart to
// rbenchEnd, values from value) under dir with Prometheus' own chunk and index writers, one
// series at a time: synth.Write, through a head, would hold every sample of a 400,000-series
// block in memory at once. It returns the block's meta.json, with the Thanos section, and the
// block's directory.
func rbenchWriteBlock(ctx context.Context, dir string, series []labels.Labels, value func(int, int64) float64, ext map[string]string) (_ *block.Meta, _ string, err error) {
	id := ulid.MustNew(ulid.Now(), ulid.DefaultEntropy())
	bdir := filepath.Join(dir, id.String())
	order := make([]int, len(series))
	symbols := map[string]struct{}{}
	for i, ls := range series {
		order[i] = i
		ls.Range(func(l labels.Label) {
			symbols[l.Name] = struct{}{}
			symbols[l.Value] = struct{}{}
		})
	}
	sort.Slice(order, func(a, b int) bool { return labels.Compare(series[order[a]], series[order[b]]) < 0 })
	syms := make([]string, 0, len(symbols))
	for sym := range symbols {
		syms = append(syms, sym)
	}
	sort.Strings(syms)
	cw, err := chunks.NewWriter(filepath.Join(bdir, block.ChunksDirname))
	if err != nil {
		return nil, "", err
	}
	defer func() {
		if cerr := cw.Close(); err == nil {
			err = cerr
		}
	}()
	iw, err := index.NewWriter(ctx, filepath.Join(bdir, block.IndexFilename))
	if err != nil {
		return nil, "", err
	}
	for _, sym := range syms {
		if err := iw.AddSymbol(sym); err != nil {
			return nil, "", err
		}
	}
	var (
		stats tsdb.BlockStats
		metas []chunks.Meta
		last  int64
	)
	for ref, i := range order {
		metas = metas[:0]
		var (
			chk *chunkenc.XORChunk
			app chunkenc.Appender
		)
		for n, ts := 0, int64(blockStart); ts < rbenchEnd; n, ts = n+1, ts+rbenchStep {
			if n%rbenchChunkSamples == 0 {
				chk = chunkenc.NewXORChunk()
				if app, err = chk.Appender(); err != nil {
					return nil, "", err
				}
				metas = append(metas, chunks.Meta{Chunk: chk, MinTime: ts})
			}
			app.Append(0, ts, value(i, ts))
			metas[len(metas)-1].MaxTime = ts
			last = max(last, ts)
			stats.NumSamples++
		}
		if err := cw.WriteChunks(metas...); err != nil {
			return nil, "", err
		}
		if err := iw.AddSeries(storage.SeriesRef(ref), series[i], metas...); err != nil {
			return nil, "", err
		}
		stats.NumSeries++
		stats.NumChunks += uint64(len(metas))
	}
	if err := iw.Close(); err != nil {
		return nil, "", err
	}
	meta := &block.Meta{BlockMeta: tsdb.BlockMeta{ULID: id, MinTime: blockStart, MaxTime: last + 1, Stats: stats, Version: 1,
		Compaction: tsdb.BlockMetaCompaction{Level: 1, Sources: []ulid.ULID{id}}},
		Thanos: &block.Thanos{Version: 1, Labels: ext, Source: "sidecar"}}
	raw, err := block.EncodeMeta(meta)
	if err != nil {
		return nil, "", err
	}
	return meta, bdir, os.WriteFile(filepath.Join(bdir, block.MetaFilename), raw, 0o644)
}

// rbenchDigest is one series' samples: how many, and a hash of their timestamps and values in
// order.
type rbenchDigest struct {
	n    int64
	hash uint64
}

type rbenchHasher struct {
	h   hash.Hash64
	buf [16]byte
	n   int64
}

func newRbenchHasher() *rbenchHasher { return &rbenchHasher{h: fnv.New64a()} }

func (h *rbenchHasher) add(t int64, v float64) {
	binary.LittleEndian.PutUint64(h.buf[:8], uint64(t))
	binary.LittleEndian.PutUint64(h.buf[8:], math.Float64bits(v))
	_, _ = h.h.Write(h.buf[:])
	h.n++
}

func (h *rbenchHasher) digest() rbenchDigest { return rbenchDigest{h.n, h.h.Sum64()} }

// rbenchExpected is what the deletions leave of the generated series: the series that keep a
// sample, with the samples no deletion covers.
func rbenchExpected(series []labels.Labels, value func(int, int64) float64) (map[string]rbenchDigest, error) {
	type del struct {
		sels       [][]*labels.Matcher
		start, end int64
	}
	var dels []del
	for _, d := range rbenchDeletions {
		sels, err := tombstones.ParseSelectors([]string{d.matcher})
		if err != nil {
			return nil, err
		}
		dels = append(dels, del{sels, d.start, d.end})
	}
	matches := func(ms []*labels.Matcher, ls labels.Labels) bool {
		for _, m := range ms {
			if !m.Matches(ls.Get(m.Name)) {
				return false
			}
		}
		return true
	}
	want := map[string]rbenchDigest{}
	for i, ls := range series {
		var ivs tombstones.Intervals
		for _, d := range dels {
			for _, sel := range d.sels {
				if matches(sel, ls) {
					ivs = ivs.Add(tombstones.Interval{Mint: d.start, Maxt: d.end})
				}
			}
		}
		h := newRbenchHasher()
		for ts := int64(blockStart); ts < rbenchEnd; ts += rbenchStep {
			if !ivs.Covers(ts) {
				h.add(ts, value(i, ts))
			}
		}
		if h.n > 0 {
			want[ls.String()] = h.digest()
		}
	}
	return want, nil
}

func rbenchCount(m map[string]rbenchDigest) int64 {
	var n int64
	for _, d := range m {
		n += d.n
	}
	return n
}

// rbenchNewBlockSamples reads the one block in the bucket under dir that is not source, with
// Prometheus' tsdb package.
func rbenchNewBlockSamples(b *testing.B, dir string, source ulid.ULID) map[string]rbenchDigest {
	b.Helper()
	bucket := filepath.Join(dir, "bucket")
	entries, err := os.ReadDir(bucket)
	if err != nil {
		b.Fatal(err)
	}
	var blocks []string
	for _, e := range entries {
		if _, err := ulid.ParseStrict(e.Name()); err == nil && e.Name() != source.String() {
			if _, err := os.Stat(filepath.Join(bucket, e.Name(), block.MetaFilename)); err == nil {
				blocks = append(blocks, e.Name())
			}
		}
	}
	if len(blocks) != 1 {
		b.Fatalf("%s: want one new block beside %s, got %v", bucket, source, blocks)
	}
	pb, err := tsdb.OpenBlock(slog.New(slog.DiscardHandler), filepath.Join(bucket, blocks[0]), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer pb.Close()
	q, err := tsdb.NewBlockQuerier(pb, math.MinInt64, math.MaxInt64)
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	got := map[string]rbenchDigest{}
	ss := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchRegexp, model.MetricNameLabel, ".+"))
	var it chunkenc.Iterator
	for ss.Next() {
		s := ss.At()
		h := newRbenchHasher()
		it = s.Iterator(it)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			if vt != chunkenc.ValFloat {
				b.Fatalf("%s: a sample of type %v", s.Labels(), vt)
			}
			h.add(it.At())
		}
		if err := it.Err(); err != nil {
			b.Fatal(err)
		}
		if _, dup := got[s.Labels().String()]; dup {
			b.Fatalf("%s twice in the new block", s.Labels())
		}
		got[s.Labels().String()] = h.digest()
	}
	if err := ss.Err(); err != nil {
		b.Fatal(err)
	}
	return got
}

// rbenchDiff describes how got differs from want, or returns "".
func rbenchDiff(want, got map[string]rbenchDigest) string {
	var missing, extra, differ []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			missing = append(missing, k)
		case g != w:
			differ = append(differ, fmt.Sprintf("%s: %d samples (want %d)", k, g.n, w.n))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	if len(missing)+len(extra)+len(differ) == 0 {
		return ""
	}
	clip := func(s []string) []string {
		sort.Strings(s)
		return s[:min(len(s), 3)]
	}
	return fmt.Sprintf("%d series missing %v, %d extra %v, %d with other samples %v",
		len(missing), clip(missing), len(extra), clip(extra), len(differ), clip(differ))
}

// rbenchThanosPath returns the pinned Thanos binary (toolPath).
func rbenchThanosPath(b *testing.B) string { return toolPath(b, "thanos", "LETHE_THANOS") }
