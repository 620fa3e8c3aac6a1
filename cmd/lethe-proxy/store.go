package main

import (
	"log/slog"
	"net"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lethe-project/lethe/proxy"
	"github.com/lethe-project/lethe/proxy/storeapi"
)

// addStoreAPI adds to g the gRPC StoreAPI server on grpcAddr in front of the stores at
// endpoints (--store.endpoint), with every sample a live tombstone covers removed.
func addStoreAPI(g *run.Group, logger *slog.Logger, reg prometheus.Registerer, mask *proxy.Mask, endpoints []string, grpcAddr string) error {
	if len(endpoints) == 0 {
		return errors.New("--store.endpoint: at least one store is needed")
	}
	stores, closeStores, err := storeapi.Dial(endpoints)
	if err != nil {
		return errors.Wrap(err, "--store.endpoint")
	}
	l, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		_ = closeStores()
		return errors.Wrap(err, "--grpc-address: listen")
	}
	srv := storeapi.NewGRPCServer(storeapi.NewServer(logger, reg, mask, stores))
	logger.Info("lethe-proxy serving the StoreAPI", "address", l.Addr().String(), "stores", endpoints)
	g.Add(func() error {
		defer func() {
			if err := closeStores(); err != nil {
				logger.Error("close store connections", "err", err)
			}
		}()
		return errors.Wrap(srv.Serve(l), "serve StoreAPI")
	}, func(error) {
		srv.GracefulStop()
	})
	return nil
}
