package storeapi

import (
	"context"
	"io"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/lethe-project/lethe/internal/storepb"
)

// streamBuffer is how many filtered frames each store's stream may run ahead of the merge.
const streamBuffer = 64

// frame is one item of a store's filtered stream: a series, or a warning or hints to pass on, or
// the error that ended the stream.
type frame struct {
	series *storepb.Series
	lset   labels.Labels
	other  *storepb.SeriesResponse
	err    error
}

// merge streams req from every store at once, filters each series through filter (nil drops it)
// and sends the survivors merged in label order, as StoreAPI requires; series of equal labels from
// several stores follow each other, which Thanos Query merges. A store that fails adds a warning
// when partial is true, and fails the call otherwise; what it sent before stays sent, filtered.
// The filter is given each series' labels when masked is set (and else, with one store, none).
func (s *Server) merge(ctx context.Context, req *storepb.SeriesRequest, partial, masked bool, filter func(*storepb.Series, labels.Labels) (*storepb.Series, error), send func(*storepb.SeriesResponse) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	streams := make([]chan frame, len(s.stores))
	for i, st := range s.stores {
		streams[i] = make(chan frame, streamBuffer)
		go s.stream(ctx, st, req, masked || len(s.stores) > 1, filter, streams[i])
	}

	// heads holds each open stream's next series; a nil channel is a stream that ended.
	heads := make([]*frame, len(streams))
	advance := func(i int) error {
		for f := range streams[i] {
			switch {
			case f.err != nil:
				s.storeErrors.WithLabelValues(s.stores[i].Name, "Series").Inc()
				if !partial {
					return storeError(s.stores[i], f.err)
				}
				s.logger.Warn("store series", "store", s.stores[i].Name, "err", f.err)
				if err := send(warningResponse(errors.Wrapf(f.err, "store %s", s.stores[i].Name))); err != nil {
					return err
				}
			case f.other != nil:
				if err := send(f.other); err != nil {
					return err
				}
			default:
				heads[i] = &f
				return nil
			}
		}
		heads[i], streams[i] = nil, nil
		return nil
	}
	for i := range streams {
		if err := advance(i); err != nil {
			return err
		}
	}
	for {
		next := -1
		for i, h := range heads {
			if h != nil && (next < 0 || labels.Compare(h.lset, heads[next].lset) < 0) {
				next = i
			}
		}
		if next < 0 {
			return nil
		}
		if err := send(seriesResponse(heads[next].series)); err != nil {
			return err
		}
		if err := advance(next); err != nil {
			return err
		}
	}
}

// stream reads one store's Series stream into out, filtered, and closes out. Series labels are
// built only withLabels.
func (s *Server) stream(ctx context.Context, st Store, req *storepb.SeriesRequest, withLabels bool, filter func(*storepb.Series, labels.Labels) (*storepb.Series, error), out chan<- frame) {
	defer close(out)
	put := func(f frame) bool {
		select {
		case out <- f:
			return true
		case <-ctx.Done():
			return false
		}
	}
	cl, err := st.Store.Series(ctx, req)
	if err != nil {
		put(frame{err: err})
		return
	}
	var builder labels.ScratchBuilder
	one := func(series *storepb.Series) bool {
		lset := labels.EmptyLabels()
		if withLabels {
			lset = seriesLabels(series, &builder)
		}
		kept, err := filter(series, lset)
		if err != nil {
			return put(frame{err: err}) && false
		}
		if kept == nil {
			return true
		}
		return put(frame{series: kept, lset: lset})
	}
	for {
		r, err := cl.Recv()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			put(frame{err: err})
			return
		}
		switch v := r.Result.(type) {
		case *storepb.SeriesResponse_Series:
			if !one(v.Series) {
				return
			}
		case *storepb.SeriesResponse_Batch:
			for _, series := range v.Batch.Series {
				if !one(series) {
					return
				}
			}
		case *storepb.SeriesResponse_Warning, *storepb.SeriesResponse_Hints:
			if !put(frame{other: r}) {
				return
			}
		}
	}
}

func seriesResponse(s *storepb.Series) *storepb.SeriesResponse {
	return &storepb.SeriesResponse{Result: &storepb.SeriesResponse_Series{Series: s}}
}

func warningResponse(err error) *storepb.SeriesResponse {
	return &storepb.SeriesResponse{Result: &storepb.SeriesResponse_Warning{Warning: err.Error()}}
}
