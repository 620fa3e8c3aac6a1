package proxy

import (
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
)

func TestSourceResolutionReadsAsThanosQuery(t *testing.T) {
	for _, c := range []struct {
		param string
		step  time.Duration
		auto  bool
		want  time.Duration
		bad   bool
	}{
		{param: "", step: time.Hour, want: 0},
		{param: "", step: time.Hour, auto: true, want: 12 * time.Minute},
		{param: "auto", step: time.Hour, want: 12 * time.Minute},
		{param: "auto", step: 0, want: 0}, // An instant query: raw, Thanos' default.
		{param: "5m", want: 5 * time.Minute},
		{param: "3600", want: time.Hour},
		{param: "0s", want: 0},
		{param: "1.5", want: 1500 * time.Millisecond},
		{param: "raw", bad: true},
		{param: "-5m", bad: true},
		{param: "-1", bad: true},
	} {
		got, err := sourceResolution(c.param, c.step, c.auto)
		if c.bad {
			testutil.NotOk(t, err, "%q", c.param)
			continue
		}
		testutil.Ok(t, err, "%q", c.param)
		testutil.Equals(t, c.want, got, "%q step %v auto %v", c.param, c.step, c.auto)
	}
	// The fast path: no parameter may be auto-downsampled, a refused value is the longest window.
	testutil.Equals(t, int64(0), downsampledWindow("", 20*time.Minute))
	testutil.Equals(t, int64(300_000), downsampledWindow("", 25*time.Minute))
	testutil.Equals(t, int64(300_000), downsampledWindow("10m", 0))
	testutil.Equals(t, int64(3_600_000), downsampledWindow("2h", 0))
	testutil.Equals(t, int64(3_600_000), downsampledWindow("raw", 0))
	// An instant query at auto (or none) reads what the querier's hidden instant default says.
	testutil.Equals(t, int64(3_600_000), downsampledWindow("auto", 0))
	testutil.Equals(t, int64(3_600_000), downsampledWindow("", 0))
	testutil.Equals(t, int64(0), downsampledWindow("0s", 0))
}

func TestDynamicLookbackFollowsThanosQuery(t *testing.T) {
	for _, c := range []struct{ base, res, want time.Duration }{
		{5 * time.Minute, 0, 5 * time.Minute},
		{5 * time.Minute, 5 * time.Minute, 5 * time.Minute},
		{5 * time.Minute, 6 * time.Minute, time.Hour},
		{5 * time.Minute, time.Hour, time.Hour},
		{time.Minute, 2 * time.Minute, 5 * time.Minute},
		{2 * time.Hour, time.Hour, 2 * time.Hour},
		{2 * time.Hour, 3 * time.Hour, 2 * time.Hour},
	} {
		testutil.Equals(t, c.want, dynamicLookback(c.base, c.res), "base %v resolution %v", c.base, c.res)
	}
}
