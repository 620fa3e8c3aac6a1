package storeapi

import (
	"bytes"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/internal/storepb/labelpb"
)

// decodeSeriesResponse decodes the series (one, or a batch) or the warning of an encoded
// SeriesResponse, as proto.Unmarshal would, without protobuf-go's reflection, which was a fifth of
// the --upstream.store read path's CPU (BenchmarkSource). Each series' bytes are copied once, its
// chunks' data are slices of that copy: b may be reused once it returns. Hints and fields this
// version does not know are skipped.
func decodeSeriesResponse(b []byte) (*storepb.SeriesResponse, error) {
	r := &storepb.SeriesResponse{}
	var batch *storepb.SeriesBatch
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldResponseSeries:
			s, err := decodeSeries(bytes.Clone(v))
			if err != nil {
				return err
			}
			r.Result = &storepb.SeriesResponse_Series{Series: s}
		case fieldResponseWarning:
			r.Result = &storepb.SeriesResponse_Warning{Warning: string(v)}
		case fieldResponseBatch:
			batch = &storepb.SeriesBatch{}
			r.Result = &storepb.SeriesResponse_Batch{Batch: batch}
			own := bytes.Clone(v)
			return eachField(own, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if num != fieldBatchSeries || typ != protowire.BytesType {
					return nil
				}
				s, err := decodeSeries(v)
				if err != nil {
					return err
				}
				batch.Series = append(batch.Series, s)
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// decodeSeries decodes an encoded Series; its labels and its chunks' data share b, which must not
// change after.
func decodeSeries(b []byte) (*storepb.Series, error) {
	s := &storepb.Series{}
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldSeriesLabels:
			name, value, err := wireLabel(v)
			if err != nil {
				return err
			}
			// The strings share b, a copy no one writes to.
			s.Labels = append(s.Labels, &labelpb.Label{Name: name, Value: value})
		case fieldSeriesChunks:
			c, err := decodeAggrChunk(v)
			if err != nil {
				return err
			}
			s.Chunks = append(s.Chunks, c)
		}
		return nil
	})
	return s, err
}

// decodeAggrChunk decodes an encoded AggrChunk; its chunks' data are slices of b.
func decodeAggrChunk(b []byte) (*storepb.AggrChunk, error) {
	c := &storepb.AggrChunk{}
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		if typ == protowire.VarintType {
			switch num {
			case fieldChunkMinTime:
				c.MinTime = int64(x)
			case fieldChunkMaxTime:
				c.MaxTime = int64(x)
			}
			return nil
		}
		if typ != protowire.BytesType {
			return nil
		}
		var dst **storepb.Chunk
		switch num {
		case fieldChunkRaw:
			dst = &c.Raw
		case 4:
			dst = &c.Count
		case 5:
			dst = &c.Sum
		case 6:
			dst = &c.Min
		case 7:
			dst = &c.Max
		case 8:
			dst = &c.Counter
		default:
			return nil
		}
		ch, err := decodeWireChunk(v)
		*dst = ch
		return err
	})
	return c, err
}

// decodeWireChunk decodes an encoded Chunk; its data is a slice of b.
func decodeWireChunk(b []byte) (*storepb.Chunk, error) {
	c := &storepb.Chunk{}
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && typ == protowire.VarintType:
			c.Type = storepb.Chunk_Encoding(int32(x))
		case num == 2 && typ == protowire.BytesType:
			c.Data = v
		case num == 3 && typ == protowire.VarintType:
			c.Hash = x
		}
		return nil
	})
	return c, err
}

// eachField calls fn with each field of the message b: its number, wire type, and its payload
// (length-delimited fields) or value (varints).
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, payload []byte, varint uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errWire
		}
		b = b[n:]
		var payload []byte
		var x uint64
		switch typ {
		case protowire.BytesType:
			payload, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return errWire
		}
		b = b[n:]
		if err := fn(num, typ, payload, x); err != nil {
			return err
		}
	}
	return nil
}
