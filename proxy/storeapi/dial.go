package storeapi

import (
	"math"

	"github.com/efficientgo/core/errors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Dial connects to the StoreAPI servers at the addresses (HOST:PORT, plain gRPC, as Thanos
// Query's --endpoint). Connections are made lazily; close closes them all.
func Dial(addrs []string) (stores []Store, close func() error, err error) {
	conns := make([]*grpc.ClientConn, 0, len(addrs))
	close = func() error {
		var first error
		for _, c := range conns {
			if err := c.Close(); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	for _, a := range addrs {
		if a == "" {
			_ = close()
			return nil, nil, errors.New("empty store endpoint")
		}
		c, err := grpc.NewClient(a,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			// Series frames of big chunks: as Thanos Query, take what the store sends.
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32)),
		)
		if err != nil {
			_ = close()
			return nil, nil, errors.Wrapf(err, "store endpoint %s", a)
		}
		conns = append(conns, c)
		stores = append(stores, NewStore(a, c))
	}
	return stores, close, nil
}

// NewGRPCServer returns a gRPC server with the filter's Store and Info services registered.
func NewGRPCServer(s *Server) *grpc.Server {
	g := grpc.NewServer(grpc.MaxSendMsgSize(math.MaxInt32), grpc.MaxRecvMsgSize(math.MaxInt32),
		// Series frames go out as the stores encoded them (see wireCodec).
		grpc.ForceServerCodecV2(newWireCodec()))
	s.wire = true
	s.Register(g)
	return g
}
