package storeapi

import (
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/efficientgo/core/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/internal/storepb/labelpb"
)

// TestDecodeSeriesResponseAsProto: random SeriesResponses (a series, a batch, a warning; raw and
// aggregate chunks, empty fields) decode as proto.Unmarshal decodes them, and the decoded message
// does not change when the bytes it came from are overwritten.
func TestDecodeSeriesResponseAsProto(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 4))
	chunk := func() *storepb.Chunk {
		if rng.IntN(4) == 0 {
			return nil
		}
		data := make([]byte, rng.IntN(40))
		for i := range data {
			data[i] = byte(rng.IntN(256))
		}
		return &storepb.Chunk{Type: storepb.Chunk_Encoding(rng.IntN(3)), Data: data, Hash: rng.Uint64() >> rng.IntN(64)}
	}
	series := func() *storepb.Series {
		s := &storepb.Series{}
		for i := range rng.IntN(5) {
			s.Labels = append(s.Labels, &labelpb.Label{Name: "l" + strconv.Itoa(i), Value: strconv.Itoa(rng.IntN(1000))})
		}
		for range rng.IntN(4) {
			c := &storepb.AggrChunk{MinTime: rng.Int64N(1 << 42), MaxTime: rng.Int64N(1<<42) - 1<<20, Raw: chunk()}
			if rng.IntN(2) == 0 {
				c.Count, c.Sum, c.Min, c.Max, c.Counter = chunk(), chunk(), chunk(), chunk(), chunk()
			}
			s.Chunks = append(s.Chunks, c)
		}
		return s
	}
	for i := range 500 {
		var r *storepb.SeriesResponse
		switch i % 3 {
		case 0:
			r = &storepb.SeriesResponse{Result: &storepb.SeriesResponse_Series{Series: series()}}
		case 1:
			b := &storepb.SeriesBatch{}
			for range rng.IntN(4) {
				b.Series = append(b.Series, series())
			}
			r = &storepb.SeriesResponse{Result: &storepb.SeriesResponse_Batch{Batch: b}}
		default:
			r = &storepb.SeriesResponse{Result: &storepb.SeriesResponse_Warning{Warning: "store " + strconv.Itoa(i)}}
		}
		b, err := proto.Marshal(r)
		testutil.Ok(t, err)
		want := &storepb.SeriesResponse{}
		testutil.Ok(t, proto.Unmarshal(b, want))
		got, err := decodeSeriesResponse(b)
		testutil.Ok(t, err)
		for j := range b {
			b[j] = 0xff
		}
		testutil.Assert(t, proto.Equal(want, got), "case %d:\nwant %v\ngot  %v", i, want, got)
	}
	_, err := decodeSeriesResponse([]byte{0x0a, 0x05, 0x01})
	testutil.NotOk(t, err, "a cut message")
}
