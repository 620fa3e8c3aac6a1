// Package bucketcfg turns the Thanos object-storage flags every lethe binary takes into a bucket.
package bucketcfg

import (
	"context"
	"os"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/go-kit/log"
	"github.com/thanos-io/objstore"
	"github.com/thanos-io/objstore/client"
	"github.com/urfave/cli/v2"
)

// Flag names, as in Thanos.
const (
	FileFlag   = "objstore.config-file"
	InlineFlag = "objstore.config"
)

// Flags are the object-storage flags.
func Flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: FileFlag, Usage: "Path to a YAML file with the object-storage configuration, in Thanos' format (type: S3|GCS|AZURE|SWIFT|COS|ALIYUNOSS|BOS|OBS|FILESYSTEM, config: ...).", EnvVars: []string{"LETHE_OBJSTORE_CONFIG_FILE"}},
		&cli.StringFlag{Name: InlineFlag, Usage: "The object-storage configuration as inline YAML, instead of --" + FileFlag + ". Example: 'type: FILESYSTEM, config: {directory: ./data/demo}'.", EnvVars: []string{"LETHE_OBJSTORE_CONFIG"}},
	}
}

// Config returns the configuration YAML the flags name.
func Config(c *cli.Context) ([]byte, error) {
	file, inline := c.String(FileFlag), c.String(InlineFlag)
	switch {
	case file != "" && inline != "":
		return nil, errors.Newf("give --%s or --%s, not both", FileFlag, InlineFlag)
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, errors.Wrap(err, "read object-storage configuration")
		}
		return b, nil
	case inline != "":
		return []byte(inline), nil
	}
	return nil, errors.Newf("no bucket configured: give --%s or --%s", FileFlag, InlineFlag)
}

// Open builds the bucket from the flags and checks that it answers, so that a misconfigured or
// unreachable bucket is one clear error before anything else happens.
func Open(c *cli.Context, logger log.Logger, component string) (objstore.Bucket, error) {
	conf, err := Config(c)
	if err != nil {
		return nil, err
	}
	bkt, err := client.NewBucket(logger, conf, component, nil)
	if err != nil {
		return nil, errors.Wrap(err, "object-storage configuration")
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	if _, err := bkt.Exists(ctx, "tombstones/"); err != nil {
		return nil, errors.Wrapf(err, "bucket %s is unreachable", bkt.Name())
	}
	return bkt, nil
}
