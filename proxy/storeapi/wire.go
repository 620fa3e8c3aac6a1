package storeapi

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/labels"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	// Registers gRPC's proto codec, which wireCodec wraps.
	_ "google.golang.org/grpc/encoding/proto"
)

// The filter passes Series frames through as the store encoded them: it reads only the labels and
// the chunks' time ranges from the wire, and decodes (and re-encodes) only a chunk that a
// tombstone's interval meets. Field numbers of Thanos' types.proto and rpc.proto.
const (
	fieldResponseSeries  = 1 // SeriesResponse.series
	fieldResponseWarning = 2 // SeriesResponse.warning
	fieldResponseBatch   = 4 // SeriesResponse.batch
	fieldBatchSeries     = 1 // SeriesBatch.series
	fieldSeriesLabels    = 1 // Series.labels
	fieldSeriesChunks    = 2 // Series.chunks
	fieldLabelName       = 1 // Label.name
	fieldLabelValue      = 2 // Label.value
	fieldChunkMinTime    = 1 // AggrChunk.min_time
	fieldChunkMaxTime    = 2 // AggrChunk.max_time
	fieldChunkRaw        = 3 // AggrChunk.raw
)

// wireFrame is one gRPC message as its protobuf bytes; wireCodec sends and receives it as is.
// A received one holds gRPC's own buffers (bufs, referenced until release), and sends them on as
// they are; b is its bytes in one piece, when read (see bytes).
type wireFrame struct {
	b    []byte
	bufs mem.BufferSlice
	own  []byte // storage of b when bufs is in pieces, reused
}

// bytes returns the message in one piece.
func (f *wireFrame) bytes() []byte {
	if f.b == nil && len(f.bufs) > 0 {
		f.own = f.own[:0]
		for _, b := range f.bufs {
			f.own = append(f.own, b.ReadOnlyData()...)
		}
		f.b = f.own
	}
	return f.b
}

// reset frees the gRPC buffers f holds.
func (f *wireFrame) reset() {
	f.bufs.Free()
	f.bufs, f.b = nil, nil
}

// wireCodec is gRPC's proto codec, except that a *wireFrame goes as its bytes: the Series stream
// is received from the stores (grpc.ForceCodecV2 on the call) and sent to the client
// (grpc.ForceServerCodecV2, NewGRPCServer) without decoding what needs no change.
type wireCodec struct {
	proto encoding.CodecV2
}

func newWireCodec() wireCodec { return wireCodec{proto: encoding.GetCodecV2("proto")} }

func (wireCodec) Name() string { return "proto" }

func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*wireFrame); ok {
		if f.bufs != nil {
			// A received message goes on in the buffers it came in; gRPC frees its reference
			// once written.
			f.bufs.Ref()
			return f.bufs, nil
		}
		// gRPC writes the message after SendMsg returns: a copy in its pool lets the caller reuse f.
		return mem.BufferSlice{mem.Copy(f.b, mem.DefaultBufferPool())}, nil
	}
	return c.proto.Marshal(v)
}

func (c wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*wireFrame); ok {
		f.reset()
		data.Ref() // Held until the frame is released.
		f.bufs = data
		if len(data) == 1 {
			f.b = data[0].ReadOnlyData()
		}
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

// wireBuf holds one received message; the frames cut from it share it, and the last to be sent
// gives it back to its pool.
type wireBuf struct {
	frame wireFrame
	refs  atomic.Int32
	pool  *sync.Pool
}

// maxPooledBuf bounds the messages whose buffers are kept for reuse.
const maxPooledBuf = 1 << 20

// getWireBuf returns a buffer of pool (a pool of *wireBuf), held once.
func getWireBuf(pool *sync.Pool) *wireBuf {
	w, ok := pool.Get().(*wireBuf)
	if !ok {
		w = &wireBuf{pool: pool}
	}
	w.refs.Store(1)
	return w
}

func (w *wireBuf) retain() *wireBuf {
	w.refs.Add(1)
	return w
}

func (w *wireBuf) release() {
	if w == nil || w.refs.Add(-1) != 0 {
		return
	}
	w.frame.reset()
	if cap(w.frame.own) <= maxPooledBuf {
		w.frame.b = nil
		w.pool.Put(w)
	}
}

var errWire = errors.New("malformed StoreAPI message")

// wireFields calls fn with each field of the message b: its number, wire type and, for
// length-delimited fields, its payload; whole is the field's bytes, tag included.
func wireFields(b []byte, fn func(num protowire.Number, typ protowire.Type, payload, whole []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errWire
		}
		var payload []byte
		m := 0
		if typ == protowire.BytesType {
			payload, m = protowire.ConsumeBytes(b[n:])
		} else {
			m = protowire.ConsumeFieldValue(num, typ, b[n:])
		}
		if m < 0 {
			return errWire
		}
		if err := fn(num, typ, payload, b[:n+m]); err != nil {
			return err
		}
		b = b[n+m:]
	}
	return nil
}

// appendBytesField appends field num, length-delimited, holding payload.
func appendBytesField(dst []byte, num protowire.Number, payload []byte) []byte {
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	return protowire.AppendBytes(dst, payload)
}

// wireLabel returns the name and value of an encoded Label. The strings share b's memory.
func wireLabel(b []byte) (name, value string, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", "", errWire
		}
		if typ != protowire.BytesType {
			m := protowire.ConsumeFieldValue(num, typ, b[n:])
			if m < 0 {
				return "", "", errWire
			}
			b = b[n+m:]
			continue
		}
		payload, m := protowire.ConsumeBytes(b[n:])
		if m < 0 {
			return "", "", errWire
		}
		switch num {
		case fieldLabelName:
			name = yoloString(payload)
		case fieldLabelValue:
			value = yoloString(payload)
		}
		b = b[n+m:]
	}
	return name, value, nil
}

func yoloString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// wireSeriesLabels adds an encoded Series' labels to b (reset first) and reports whether they
// came sorted by name.
func wireSeriesLabels(series []byte, b *labels.ScratchBuilder) (sorted bool, err error) {
	b.Reset()
	sorted = true
	prev, first := "", true
	it := wireLabelIter{b: series}
	for {
		name, value, ok := it.next()
		if !ok {
			return sorted, it.err
		}
		if !first && name <= prev {
			sorted = false
		}
		prev, first = name, false
		b.Add(name, value)
	}
}

// wireLabelIter walks the labels of an encoded Series, in the order they are encoded; err tells
// a malformed one.
type wireLabelIter struct {
	b   []byte
	err error
}

func (it *wireLabelIter) next() (name, value string, ok bool) {
	for len(it.b) > 0 {
		num, typ, n := protowire.ConsumeTag(it.b)
		if n < 0 {
			it.b, it.err = nil, errWire
			return "", "", false
		}
		var payload []byte
		m := 0
		if typ == protowire.BytesType {
			payload, m = protowire.ConsumeBytes(it.b[n:])
		} else {
			m = protowire.ConsumeFieldValue(num, typ, it.b[n:])
		}
		if m < 0 {
			it.b, it.err = nil, errWire
			return "", "", false
		}
		it.b = it.b[n+m:]
		if num != fieldSeriesLabels || typ != protowire.BytesType {
			continue
		}
		name, value, err := wireLabel(payload)
		if err != nil {
			it.b, it.err = nil, err
			return "", "", false
		}
		return name, value, true
	}
	return "", "", false
}

// compareWireLabels compares the label sets of two encoded Series as labels.Compare does; both
// must carry their labels sorted by name.
func compareWireLabels(a, b []byte) int {
	ia, ib := wireLabelIter{b: a}, wireLabelIter{b: b}
	for {
		na, va, oka := ia.next()
		nb, vb, okb := ib.next()
		switch {
		case !oka && !okb:
			return 0
		case !oka:
			return -1
		case !okb:
			return 1
		}
		if na != nb {
			if na < nb {
				return -1
			}
			return 1
		}
		if va != vb {
			if va < vb {
				return -1
			}
			return 1
		}
	}
}

// wireLabelsOnly returns the encoded Series with its labels only.
func wireLabelsOnly(series []byte) ([]byte, error) {
	out := make([]byte, 0, len(series))
	err := wireFields(series, func(num protowire.Number, _ protowire.Type, _, whole []byte) error {
		if num == fieldSeriesLabels {
			out = append(out, whole...)
		}
		return nil
	})
	return out, err
}

// wireChunkRange returns an encoded AggrChunk's time range and whether it is a raw chunk.
func wireChunkRange(chunk []byte) (mint, maxt int64, raw bool, err error) {
	err = wireFields(chunk, func(num protowire.Number, typ protowire.Type, _, whole []byte) error {
		switch {
		case num == fieldChunkRaw:
			raw = true
		case (num == fieldChunkMinTime || num == fieldChunkMaxTime) && typ == protowire.VarintType:
			_, _, n := protowire.ConsumeTag(whole)
			v, m := protowire.ConsumeVarint(whole[n:])
			if m < 0 {
				return errWire
			}
			if num == fieldChunkMinTime {
				mint = int64(v)
			} else {
				maxt = int64(v)
			}
		}
		return nil
	})
	return mint, maxt, raw, err
}

// eachWireSeries calls fn with each series of an encoded SeriesResponse, and returns its warning.
func eachWireSeries(msg []byte, fn func(series []byte) error) (warning string, err error) {
	err = wireFields(msg, func(num protowire.Number, typ protowire.Type, payload, _ []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldResponseSeries:
			return fn(payload)
		case fieldResponseWarning:
			warning = string(payload)
		case fieldResponseBatch:
			return wireFields(payload, func(num protowire.Number, typ protowire.Type, payload, _ []byte) error {
				if num == fieldBatchSeries && typ == protowire.BytesType {
					return fn(payload)
				}
				return nil
			})
		}
		return nil
	})
	return warning, err
}
