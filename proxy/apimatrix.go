package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"sort"
	"strconv"
	"unicode/utf8"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

// The raw samples read through a query API come as one JSON matrix per selector: millions of
// [timestamp, "value"] pairs. encoding/json takes each pair through reflection and each sample
// into its own allocation, from the whole answer held in memory; the answer is read here instead
// in one pass as it streams in, through a buffer that holds only the value being read, each
// series' samples into one slice. What it accepts is what Prometheus' API writes (and Thanos',
// Mimir's, VictoriaMetrics'): a timestamp in decimal seconds, a value as a quoted float.

// apiAnswer is a query API answer's envelope: its data's matrix and its warnings.
type apiAnswer struct {
	status   string
	series   []*sampleSeries
	warnings []string
	// histograms is set when a series carried native histograms.
	histograms bool
}

// streamMatrixAnswer reads an answer of the query endpoint whose data is a matrix from r.
func streamMatrixAnswer(r io.Reader) (*apiAnswer, error) {
	return readMatrixAnswer(&jsonScanner{r: r, b: make([]byte, 0, 64<<10), mark: -1})
}

func readMatrixAnswer(p *jsonScanner) (*apiAnswer, error) {
	a := &apiAnswer{}
	err := p.object(func(key string) error {
		switch key {
		case "status":
			s, err := p.str()
			a.status = s
			return err
		case "data":
			return p.matrixData(a)
		case "warnings":
			raw, err := p.skip()
			if err != nil {
				return err
			}
			return json.Unmarshal(raw, &a.warnings)
		}
		_, err := p.skip()
		return err
	})
	if err != nil {
		return nil, err
	}
	if p.ws(); p.avail() {
		return nil, p.fail("trailing bytes")
	}
	if p.err != nil {
		return nil, p.err
	}
	return a, nil
}

// matrixData reads {"resultType": "matrix", "result": [...]}.
func (p *jsonScanner) matrixData(a *apiAnswer) error {
	return p.object(func(key string) error {
		switch key {
		case "resultType":
			t, err := p.str()
			if err == nil && t != "matrix" {
				err = errors.Newf("result type %q, want matrix", t)
			}
			return err
		case "result":
			return p.array(func() error {
				s, err := p.matrixSeries(a)
				if err == nil {
					a.series = append(a.series, s)
				}
				return err
			})
		}
		_, err := p.skip()
		return err
	})
}

// matrixSeries reads {"metric": {...}, "values": [[t, "v"], ...], "histograms": [...]}.
func (p *jsonScanner) matrixSeries(a *apiAnswer) (*sampleSeries, error) {
	s := &sampleSeries{}
	var b labels.ScratchBuilder
	err := p.object(func(key string) error {
		switch key {
		case "metric":
			return p.object(func(name string) error {
				v, err := p.str()
				b.Add(name, v)
				return err
			})
		case "values":
			return p.array(func() error {
				t, v, err := p.samplePair()
				s.samples = append(s.samples, fSample{t: t, f: v})
				return err
			})
		case "histograms":
			raw, err := p.skip()
			if err == nil && !bytes.Equal(bytes.TrimSpace(raw), []byte("[]")) && !bytes.Equal(raw, []byte("null")) {
				a.histograms = true
			}
			return err
		}
		_, err := p.skip()
		return err
	})
	b.Sort()
	s.lset = b.Labels()
	return s, err
}

// samplePair reads [1793491260.5, "1.25"] as milliseconds and a float.
func (p *jsonScanner) samplePair() (int64, float64, error) {
	if err := p.expect('['); err != nil {
		return 0, 0, err
	}
	p.ws()
	p.mark = p.i
	for p.avail() && (p.b[p.i] == '-' || p.b[p.i] == '+' || p.b[p.i] == '.' || p.b[p.i] == 'e' || p.b[p.i] == 'E' || (p.b[p.i] >= '0' && p.b[p.i] <= '9')) {
		p.i++
	}
	t, err := parseAPITimestamp(p.b[p.mark:p.i])
	p.mark = -1
	if err != nil {
		return 0, 0, p.fail("timestamp")
	}
	if err := p.expect(','); err != nil {
		return 0, 0, err
	}
	vs, err := p.strBytes()
	if err != nil {
		return 0, 0, err
	}
	v, err := strconv.ParseFloat(string(vs), 64)
	if err != nil {
		return 0, 0, p.fail("sample value") // Not quoted: it may be a deleted sample's.
	}
	return t, v, p.expect(']')
}

// parseAPITimestamp reads decimal seconds as milliseconds, as Prometheus' model.Time does
// (digits past the third decimal are dropped); an exponent is read as a float.
func parseAPITimestamp(b []byte) (int64, error) {
	neg := len(b) > 0 && b[0] == '-'
	digits := b
	if neg {
		digits = b[1:]
	}
	var secs, ms int64
	i := 0
	for ; i < len(digits) && digits[i] >= '0' && digits[i] <= '9'; i++ {
		if secs > (math.MaxInt64/1000-9)/10 {
			return 0, errors.Newf("timestamp %q out of range", b)
		}
		secs = secs*10 + int64(digits[i]-'0')
	}
	if i == 0 {
		return 0, errors.Newf("timestamp %q", b)
	}
	if i < len(digits) && digits[i] == '.' {
		i++
		for n, scale := 0, int64(100); i < len(digits) && digits[i] >= '0' && digits[i] <= '9'; i, n = i+1, n+1 {
			if n < 3 {
				ms += int64(digits[i]-'0') * scale
				scale /= 10
			}
		}
	}
	if i != len(digits) {
		f, err := strconv.ParseFloat(string(b), 64)
		if err != nil || math.IsNaN(f) || math.Abs(f) > math.MaxInt64/1000 {
			return 0, errors.Newf("timestamp %q", b)
		}
		return int64(f * 1000), nil
	}
	t := secs*1000 + ms
	if neg {
		t = -t
	}
	return t, nil
}

// jsonScanner reads JSON values off b from i on; with r set, b is a window of r's bytes that
// moves on as they are read, keeping those from mark on (-1: none).
type jsonScanner struct {
	b    []byte
	i    int
	r    io.Reader
	mark int
	// read is how many bytes of r were dropped from b's front.
	read int
	err  error
}

// avail reports whether b holds a byte at i, reading more of r when it does not.
func (p *jsonScanner) avail() bool {
	for p.i >= len(p.b) {
		if p.r == nil || p.err != nil {
			return false
		}
		keep := p.i
		if p.mark >= 0 {
			keep = p.mark
		}
		n := copy(p.b, p.b[keep:])
		p.b, p.i, p.read = p.b[:n], p.i-keep, p.read+keep
		if p.mark >= 0 {
			p.mark = 0
		}
		if len(p.b) == cap(p.b) {
			p.b = append(make([]byte, 0, 2*cap(p.b)), p.b...)
		}
		m, err := p.r.Read(p.b[len(p.b):cap(p.b)])
		p.b = p.b[:len(p.b)+m]
		if err != nil {
			if p.err = err; errors.Is(err, io.EOF) {
				p.err = nil
				p.r = nil
			}
		}
	}
	return true
}

func (p *jsonScanner) fail(what string) error {
	if p.err != nil {
		return errors.Wrap(p.err, "read upstream samples")
	}
	return errors.Newf("decode upstream samples: %s at byte %d", what, p.read+p.i)
}

func (p *jsonScanner) ws() {
	for p.avail() && (p.b[p.i] == ' ' || p.b[p.i] == '\n' || p.b[p.i] == '\r' || p.b[p.i] == '\t') {
		p.i++
	}
}

func (p *jsonScanner) expect(c byte) error {
	p.ws()
	if !p.avail() || p.b[p.i] != c {
		return p.fail("want " + strconv.QuoteRune(rune(c)))
	}
	p.i++
	return nil
}

// null steps over a null, reporting whether there was one.
func (p *jsonScanner) null() bool {
	p.ws()
	p.mark = p.i
	defer func() { p.mark = -1 }()
	for n := 0; n < 4; n++ {
		if p.i = p.mark + n; !p.avail() || p.b[p.i] != "null"[n] {
			p.i = p.mark
			return false
		}
	}
	p.i = p.mark + 4
	return true
}

// object reads an object, calling field with each key and the scanner at its value.
func (p *jsonScanner) object(field func(key string) error) error {
	if p.null() {
		return nil
	}
	if err := p.expect('{'); err != nil {
		return err
	}
	if p.ws(); p.avail() && p.b[p.i] == '}' {
		p.i++
		return nil
	}
	for {
		key, err := p.str()
		if err != nil {
			return err
		}
		if err := p.expect(':'); err != nil {
			return err
		}
		if err := field(key); err != nil {
			return err
		}
		p.ws()
		if p.avail() && p.b[p.i] == ',' {
			p.i++
			continue
		}
		return p.expect('}')
	}
}

// array reads an array, calling elem with the scanner at each element.
func (p *jsonScanner) array(elem func() error) error {
	if p.null() {
		return nil
	}
	if err := p.expect('['); err != nil {
		return err
	}
	if p.ws(); p.avail() && p.b[p.i] == ']' {
		p.i++
		return nil
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		p.ws()
		if p.avail() && p.b[p.i] == ',' {
			p.i++
			continue
		}
		return p.expect(']')
	}
}

func (p *jsonScanner) str() (string, error) {
	b, err := p.strBytes()
	return string(b), err
}

// strBytes reads a string; one without escapes is returned as a slice of b, valid until the
// next read.
func (p *jsonScanner) strBytes() ([]byte, error) {
	if err := p.expect('"'); err != nil {
		return nil, err
	}
	p.mark = p.i - 1 // The quote: an escaped string is read again from there.
	defer func() { p.mark = -1 }()
	for p.avail() {
		switch c := p.b[p.i]; {
		case c == '"':
			p.i++
			str := p.b[p.mark+1 : p.i-1]
			if !utf8.Valid(str) {
				return nil, p.fail("invalid UTF-8")
			}
			return str, nil
		case c == '\\':
			// Escapes: the string is read by encoding/json.
			p.i = p.mark
			raw, err := p.skip()
			if err != nil {
				return nil, err
			}
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return nil, p.fail("string")
			}
			return []byte(s), nil
		case c < 0x20:
			return nil, p.fail("control character in string")
		}
		p.i++
	}
	return nil, p.fail("unterminated string")
}

// skip steps over one value and returns its bytes, valid until the next read.
func (p *jsonScanner) skip() ([]byte, error) {
	p.ws()
	p.mark = p.i
	defer func() { p.mark = -1 }()
	depth := 0
	for p.avail() {
		switch c := p.b[p.i]; {
		case c == '"':
			for p.i++; p.avail() && p.b[p.i] != '"'; p.i++ {
				if p.b[p.i] == '\\' {
					p.i++
				}
			}
			if !p.avail() {
				return nil, p.fail("unterminated string")
			}
			p.i++
			if depth == 0 {
				return p.value()
			}
		case c == '{' || c == '[':
			depth++
			p.i++
		case c == '}' || c == ']':
			if depth == 0 {
				return p.value()
			}
			depth--
			p.i++
			if depth == 0 {
				return p.value()
			}
		case (c == ',' || c == ':') && depth == 0:
			return p.value()
		default:
			p.i++
		}
	}
	return p.value()
}

// value checks that b[mark:i] is one JSON value and returns it.
func (p *jsonScanner) value() ([]byte, error) {
	raw := bytes.TrimSpace(p.b[p.mark:p.i])
	if len(raw) == 0 || !json.Valid(raw) {
		return nil, p.fail("value")
	}
	return raw, nil
}

// fSample is one float sample.
type fSample struct {
	t int64
	f float64
}

// sampleSeries is a series of float samples in time order, as read off a query API answer.
type sampleSeries struct {
	lset    labels.Labels
	samples []fSample
}

func (s *sampleSeries) Labels() labels.Labels { return s.lset }

func (s *sampleSeries) Iterator(it chunkenc.Iterator) chunkenc.Iterator {
	if si, ok := it.(*sampleIterator); ok {
		*si = sampleIterator{samples: s.samples, i: -1}
		return si
	}
	return &sampleIterator{samples: s.samples, i: -1}
}

var _ storage.Series = (*sampleSeries)(nil)

type sampleIterator struct {
	samples []fSample
	i       int
}

func (it *sampleIterator) Next() chunkenc.ValueType {
	if it.i+1 >= len(it.samples) {
		it.i = len(it.samples)
		return chunkenc.ValNone
	}
	it.i++
	return chunkenc.ValFloat
}

func (it *sampleIterator) Seek(t int64) chunkenc.ValueType {
	if it.i < 0 {
		it.i = 0
	}
	if it.i >= len(it.samples) {
		return chunkenc.ValNone
	}
	if it.samples[it.i].t >= t {
		return chunkenc.ValFloat
	}
	it.i += sort.Search(len(it.samples)-it.i, func(j int) bool { return it.samples[it.i+j].t >= t })
	if it.i >= len(it.samples) {
		return chunkenc.ValNone
	}
	return chunkenc.ValFloat
}

func (it *sampleIterator) At() (int64, float64) { s := it.samples[it.i]; return s.t, s.f }

func (it *sampleIterator) AtHistogram(*histogram.Histogram) (int64, *histogram.Histogram) {
	return it.samples[it.i].t, nil
}

func (it *sampleIterator) AtFloatHistogram(*histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	return it.samples[it.i].t, nil
}

func (it *sampleIterator) AtT() int64  { return it.samples[it.i].t }
func (it *sampleIterator) AtST() int64 { return 0 }
func (it *sampleIterator) Err() error  { return nil }
