package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
)

// TestParseMatrixAnswerReadsAsEncodingJSON: random query API answers (label values with escapes
// and non-ASCII, NaN and infinite values, fractional and negative timestamps, keys in any order,
// whitespace) read the same as encoding/json reads them into Prometheus' model.Matrix.
func TestParseMatrixAnswerReadsAsEncodingJSON(t *testing.T) {
	rng := rand.New(rand.NewSource(17))
	values := []string{"1", "-2.5", "NaN", "+Inf", "-Inf", "1e+300", "0.1", "3.0000000000000004", "-0"}
	labelValues := []string{"web", `a"quote`, `back\slash`, "tab\there", "ünïcode", "", "new\nline", "</script>"}
	for round := 0; round < 200; round++ {
		var m model.Matrix
		for s := 0; s < rng.Intn(5); s++ {
			ss := &model.SampleStream{Metric: model.Metric{"__name__": "m", "i": model.LabelValue(strconv.Itoa(s))}}
			if rng.Intn(2) == 0 {
				ss.Metric["v"] = model.LabelValue(labelValues[rng.Intn(len(labelValues))])
			}
			ts := int64(rng.Intn(2_000_000_000_000)) - 1_000_000_000_000
			for i := 0; i < rng.Intn(20); i++ {
				ts += int64(rng.Intn(100_000)) + 1
				v, _ := strconv.ParseFloat(values[rng.Intn(len(values))], 64)
				ss.Values = append(ss.Values, model.SamplePair{Timestamp: model.Time(ts), Value: model.SampleValue(v)})
			}
			m = append(m, ss)
		}
		result, err := json.Marshal(m)
		testutil.Ok(t, err)
		sep := []string{"", " ", "\n  "}[rng.Intn(3)]
		data := `{"resultType":"matrix",` + sep + `"result":` + string(result) + `}`
		if rng.Intn(2) == 0 {
			data = `{` + sep + `"result":` + string(result) + `,"resultType": "matrix"}`
		}
		body := `{"status":"success","data":` + data + `,"warnings":["w1"],"infos":["i"]}`
		if rng.Intn(2) == 0 {
			body = `{"warnings":["w1"]` + sep + `,"data":` + data + `,"status":"success"}`
		}
		got, err := parseMatrixAnswer([]byte(body))
		testutil.Ok(t, err, body)
		// Streamed in, a byte or a few at a time, it reads the same.
		streamed, err := streamMatrixAnswer(iotest.OneByteReader(strings.NewReader(body)))
		testutil.Ok(t, err, body)
		testutil.Equals(t, len(got.series), len(streamed.series))
		for i := range got.series {
			testutil.Equals(t, got.series[i].lset, streamed.series[i].lset)
			testutil.Equals(t, len(got.series[i].samples), len(streamed.series[i].samples))
			for j, s := range got.series[i].samples {
				o := streamed.series[i].samples[j]
				testutil.Assert(t, s.t == o.t && (s.f == o.f || (math.IsNaN(s.f) && math.IsNaN(o.f))), "sample %d of series %d", j, i)
			}
		}
		testutil.Equals(t, got.warnings, streamed.warnings)
		testutil.Equals(t, "success", got.status)
		testutil.Equals(t, []string{"w1"}, got.warnings)
		testutil.Equals(t, false, got.histograms)

		var env struct {
			Data struct {
				Result model.Matrix `json:"result"`
			} `json:"data"`
		}
		testutil.Ok(t, json.Unmarshal([]byte(body), &env))
		testutil.Equals(t, len(env.Data.Result), len(got.series))
		for i, want := range env.Data.Result {
			testutil.Equals(t, labels.FromMap(metricMap(want.Metric)), got.series[i].lset)
			it := got.series[i].Iterator(nil)
			for _, p := range want.Values {
				testutil.Equals(t, chunkenc.ValFloat, it.Next())
				ts, v := it.At()
				testutil.Equals(t, int64(p.Timestamp), ts)
				testutil.Assert(t, v == float64(p.Value) || (math.IsNaN(v) && math.IsNaN(float64(p.Value))), "%v vs %v", v, p.Value)
			}
			testutil.Equals(t, chunkenc.ValNone, it.Next())
		}
	}
}

// parseMatrixAnswer reads a whole answer held in memory.
func parseMatrixAnswer(b []byte) (*apiAnswer, error) {
	return readMatrixAnswer(&jsonScanner{b: b, mark: -1})
}

func metricMap(m model.Metric) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[string(k)] = string(v)
	}
	return out
}

func TestParseMatrixAnswerRefusesWhatIsNotAMatrix(t *testing.T) {
	ok := `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"a":"b"},"values":[[1.5,"2"]]}]}}`
	got, err := parseMatrixAnswer([]byte(ok))
	testutil.Ok(t, err)
	testutil.Equals(t, 1, len(got.series))
	it := got.series[0].Iterator(nil)
	testutil.Equals(t, chunkenc.ValFloat, it.Next())
	ts, v := it.At()
	testutil.Equals(t, int64(1500), ts)
	testutil.Equals(t, 2.0, v)

	withHistograms := `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"a":"b"},"histograms":[[1,{"count":"1","sum":"1","buckets":[[0,"0.5","1","1"]]}]]}]}}`
	got, err = parseMatrixAnswer([]byte(withHistograms))
	testutil.Ok(t, err)
	testutil.Assert(t, got.histograms, "native histograms not noticed")

	for _, bad := range []string{
		ok[:len(ok)-1],
		ok[:60],
		strings.Replace(ok, `"matrix"`, `"vector"`, 1),
		strings.Replace(ok, `"2"`, `2`, 1),
		strings.Replace(ok, `"2"`, `"two"`, 1),
		strings.Replace(ok, `1.5`, `"1.5"`, 1),
		strings.Replace(ok, `"b"`, `"b`, 1),
		ok + "x",
		"",
	} {
		_, err := parseMatrixAnswer([]byte(bad))
		testutil.NotOk(t, err, "%q", bad)
		testutil.Assert(t, !strings.Contains(fmt.Sprint(err), `"a"`), "the error names a label: %v", err)
		_, err = streamMatrixAnswer(iotest.HalfReader(strings.NewReader(bad)))
		testutil.NotOk(t, err, "streamed %q", bad)
	}
	// A stream that fails part way is an error, whatever was read before.
	_, err = streamMatrixAnswer(io.MultiReader(strings.NewReader(ok[:70]), iotest.ErrReader(errors.New("connection reset"))))
	testutil.NotOk(t, err)
	testutil.Assert(t, strings.Contains(err.Error(), "connection reset"), "%v", err)
}

// floatSample is one float sample as a chunks.Sample, for the tests' list series.
type floatSample struct {
	t int64
	f float64
}

func (s floatSample) T() int64                    { return s.t }
func (floatSample) ST() int64                     { return 0 }
func (s floatSample) F() float64                  { return s.f }
func (floatSample) H() *histogram.Histogram       { return nil }
func (floatSample) FH() *histogram.FloatHistogram { return nil }
func (floatSample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s floatSample) Copy() chunks.Sample         { return s }
