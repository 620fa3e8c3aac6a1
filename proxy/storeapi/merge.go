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
// them (its own batches included), when no limit asks the merge to count them.
func (s *Server) merge(ctx context.Context, req *storepb.SeriesRequest, partial, masked bool, filter wireFilter, send func(frame) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	streams := make([]chan frame, len(s.stores))
	whole := !masked && len(s.stores) == 1 && req.Limit == 0
	for i, st := range s.stores {
		streams[i] = make(chan frame, streamBuffer)
		go s.stream(ctx, st, req, masked || len(s.stores) > 1, whole, filter, streams[i])
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
// unread and unfiltered.
func (s *Server) stream(ctx context.Context, st Store, req *storepb.SeriesRequest, withLabels, whole bool, filter wireFilter, out chan<- frame) {
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
	)
	one := func(series []byte, buf *wireBuf) bool {
		if withLabels {
			sorted, err := wireSeriesLabels(series, &builder)
			if err == nil && !sorted {
				builder.Sort()
				series, err = sortedWireSeries(series)
				buf = nil
			}
			if err != nil {
				return put(frame{err: err}) && false
			}
			builder.Overwrite(&lset)
		}
		kept, err := filter(series, lset)
		if err != nil {
			return put(frame{err: err}) && false
		}
		if kept == nil {
			return true
		}
		f := frame{series: kept}
		if buf != nil && unsafe.SliceData(kept) == unsafe.SliceData(series) {
			f.buf = buf.retain()
		}
		return put(f)
	}
	errStop := errors.New("stop")
	for {
		buf := getWireBuf()
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
		err = wireFields(buf.frame.bytes(), func(num protowire.Number, typ protowire.Type, payload, _ []byte) error {
			switch {
			case num == fieldResponseSeries && typ == protowire.BytesType:
				if !one(payload, buf) {
					return errStop
				}
			case num == fieldResponseBatch && typ == protowire.BytesType:
				return wireFields(payload, func(num protowire.Number, typ protowire.Type, payload, _ []byte) error {
					if num == fieldBatchSeries && typ == protowire.BytesType && !one(payload, buf) {
						return errStop
					}
					return nil
				})
			default:
				other = true // A warning or hints: passed on as they came.
			}
			return nil
		})
		switch {
		case errors.Is(err, errStop):
			return
		case err != nil:
			put(frame{err: err})
			return
		case other && !put(frame{other: &buf.frame, buf: buf.retain()}):
			return
		}
		buf.release()
	}
}

// openSeries calls Series on the store and returns the reader of its messages, encoded. Over a
// gRPC connection the messages are taken off the wire as they are; a bare client's are encoded
// again.
func openSeries(ctx context.Context, st Store, req *storepb.SeriesRequest) (func(*wireFrame) error, error) {
	if st.conn != nil {
		cs, err := st.conn.NewStream(ctx, &storepb.Store_ServiceDesc.Streams[0], storepb.Store_Series_FullMethodName, grpc.ForceCodecV2(wireCodec{}))
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
