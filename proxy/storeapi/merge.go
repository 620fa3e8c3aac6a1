package storeapi

import (
	"context"
	"io"
	"sort"
	"unsafe"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/labels"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/lethe-project/lethe/internal/storepb"
)

// streamBuffer is how many filtered frames each store's stream may run ahead of the merge.
const streamBuffer = 64

// frame is one item of a store's filtered stream: a series (an encoded storepb.Series), or a
// warning or hints to pass on (an encoded storepb.SeriesResponse), or the error that ended the
// stream. buf, when set, holds the bytes and is released once the frame is sent.
type frame struct {
	series []byte
	other  *wireFrame
	buf    *wireBuf
	err    error
	// flush is set on a message of series passed on whole: the series before it go first.
	flush bool
}

// wireFilter returns an encoded series without the deleted samples (series itself when nothing
// changes), or nil to drop it. lset is valid during the call only.
type wireFilter func(series []byte, lset labels.Labels) ([]byte, error)

// merge streams req from every store at once, filters each series through filter (nil drops it)
// and sends the survivors merged in label order, as StoreAPI requires; series of equal labels from
// several stores follow each other, which Thanos Query merges. A store that fails adds a warning
// when partial is true, and fails the call otherwise; what it sent before stays sent, filtered.
// The filter is given each series' labels when masked is set (and else, with one store, none).
// send must not keep the frame's bytes after it returns.
// Unmasked, one store's messages need no change: they are sent on whole, as the store encoded
// them (its own batches included), when no limit asks the merge to count them; masked, so are
// those whose series all pass unchanged.
func (s *Server) merge(ctx context.Context, req *storepb.SeriesRequest, partial, masked bool, filter wireFilter, send func(frame) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	streams := make([]chan frame, len(s.stores))
	// One store's series need no merge; unless a limit asks to count them, its messages go on
	// whole: all of them unmasked, and those whose series all pass unchanged masked.
	single := len(s.stores) == 1 && req.Limit == 0
	for i, st := range s.stores {
		streams[i] = make(chan frame, streamBuffer)
		go s.stream(ctx, st, req, masked || len(s.stores) > 1, single && !masked, single, filter, streams[i])
	}

	// heads holds each open stream's next series; live tells the streams not yet ended.
	heads := make([]frame, len(streams))
	live := make([]bool, len(streams))
	advance := func(i int) error {
		for f := range streams[i] {
			switch {
			case f.err != nil:
				s.storeErrors.WithLabelValues(s.stores[i].Name, "Series").Inc()
				if !partial {
					return storeError(s.stores[i], f.err)
				}
				s.logger.Warn("store series", "store", s.stores[i].Name, "err", f.err)
				w, err := proto.Marshal(warningResponse(errors.Wrapf(f.err, "store %s", s.stores[i].Name)))
				if err != nil {
					return err
				}
				if err := send(frame{other: &wireFrame{b: w}}); err != nil {
					return err
				}
			case f.other != nil:
				err := send(f)
				f.buf.release()
				if err != nil {
					return err
				}
			default:
				heads[i], live[i] = f, true
				return nil
			}
		}
		heads[i], live[i], streams[i] = frame{}, false, nil
		return nil
	}
	for i := range streams {
		if err := advance(i); err != nil {
			return err
		}
	}
	for {
		next := -1
		for i := range heads {
			if live[i] && (next < 0 || compareWireLabels(heads[i].series, heads[next].series) < 0) {
				next = i
			}
		}
		if next < 0 {
			return nil
		}
		err := send(heads[next])
		heads[next].buf.release()
		if err != nil {
			return err
		}
		if err := advance(next); err != nil {
			return err
		}
	}
}

// stream reads one store's Series stream into out, filtered, and closes out. Series labels are
// read only withLabels; then a series whose labels the store did not sort is re-encoded sorted,
// so that the merge can compare the encoded labels. With whole, every message goes on as it came,
// unread and unfiltered; with unchanged, a message whose series all pass unchanged does, after
// the series before it (frame.flush).
func (s *Server) stream(ctx context.Context, st Store, req *storepb.SeriesRequest, withLabels, whole, unchanged bool, filter wireFilter, out chan<- frame) {
	defer close(out)
	put := func(f frame) bool {
		select {
		case out <- f:
			return true
		case <-ctx.Done():
			return false
		}
	}
	recv, err := openSeries(ctx, st, req)
	if err != nil {
		put(frame{err: err})
		return
	}
	var (
		builder labels.ScratchBuilder
		lset    labels.Labels
		// kept holds the filtered series of one message; shared tells those still in its buffer.
		kept   []frame
		shared []bool
		same   bool // every series of the message passes unchanged
	)
	one := func(series []byte) error {
		inBuf := true
		if withLabels {
			sorted, err := wireSeriesLabels(series, &builder)
			if err == nil && !sorted {
				builder.Sort()
				series, err = sortedWireSeries(series)
				inBuf = false
			}
			if err != nil {
				return err
			}
			builder.Overwrite(&lset)
		}
		k, err := filter(series, lset)
		if err != nil {
			return err
		}
		inBuf = inBuf && k != nil && unsafe.SliceData(k) == unsafe.SliceData(series)
		same = same && inBuf
		if k != nil {
			kept, shared = append(kept, frame{series: k}), append(shared, inBuf)
		}
		return nil
	}
	for {
		buf := getWireBuf(&s.bufs)
		err := recv(&buf.frame)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			put(frame{err: err})
			return
		}
		if whole {
			if !put(frame{other: &buf.frame, buf: buf}) {
				return
			}
			continue
		}
		other := false
		kept, shared, same = kept[:0], shared[:0], true
		err = wireFields(buf.frame.bytes(), func(num protowire.Number, typ protowire.Type, payload, _ []byte) error {
			switch {
			case num == fieldResponseSeries && typ == protowire.BytesType:
				return one(payload)
			case num == fieldResponseBatch && typ == protowire.BytesType:
				return wireFields(payload, func(num protowire.Number, typ protowire.Type, payload, _ []byte) error {
					if num == fieldBatchSeries && typ == protowire.BytesType {
						return one(payload)
					}
					return nil
				})
			default:
				other = true // A warning or hints: passed on as they came.
			}
			return nil
		})
		if err != nil {
			put(frame{err: err})
			return
		}
		switch {
		case other:
			if !put(frame{other: &buf.frame, buf: buf.retain()}) {
				return
			}
		case unchanged && same && len(kept) > 0:
			if !put(frame{other: &buf.frame, buf: buf.retain(), flush: true}) {
				return
			}
		default:
			for i, f := range kept {
				if shared[i] {
					f.buf = buf.retain()
				}
				if !put(f) {
					return
				}
			}
		}
		buf.release()
	}
}

// openSeries calls Series on the store and returns the reader of its messages, encoded. Over a
// gRPC connection the messages are taken off the wire as they are; a bare client's are encoded
// again.
func openSeries(ctx context.Context, st Store, req *storepb.SeriesRequest) (func(*wireFrame) error, error) {
	if st.conn != nil {
		cs, err := st.conn.NewStream(ctx, &storepb.Store_ServiceDesc.Streams[0], storepb.Store_Series_FullMethodName, grpc.ForceCodecV2(newWireCodec()))
		if err != nil {
			return nil, err
		}
		if err := cs.SendMsg(req); err != nil {
			return nil, err
		}
		if err := cs.CloseSend(); err != nil {
			return nil, err
		}
		return func(f *wireFrame) error { return cs.RecvMsg(f) }, nil
	}
	cl, err := st.Store.Series(ctx, req)
	if err != nil {
		return nil, err
	}
	return func(f *wireFrame) error {
		r, err := cl.Recv()
		if err != nil {
			return err
		}
		f.own, err = proto.MarshalOptions{}.MarshalAppend(f.own[:0], r)
		f.b = f.own
		return err
	}, nil
}

// sortedWireSeries re-encodes an encoded series with its labels sorted by name.
func sortedWireSeries(series []byte) ([]byte, error) {
	var s storepb.Series
	if err := proto.Unmarshal(series, &s); err != nil {
		return nil, err
	}
	sort.SliceStable(s.Labels, func(i, j int) bool { return s.Labels[i].Name < s.Labels[j].Name })
	return proto.Marshal(&s)
}

func warningResponse(err error) *storepb.SeriesResponse {
	return &storepb.SeriesResponse{Result: &storepb.SeriesResponse_Warning{Warning: err.Error()}}
}
