package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tether-k8s/tether/core/registry"
)

// storeOptions are the flags that say where the registry lives: a bbolt
// file (--data) or etcd. They are persistent flags of the root command, so
// serve and the cluster commands (when no relay runs) open the same store.
type storeOptions struct {
	store       string
	endpoints   []string
	cert, key   string
	ca          string
	prefix      string
	kekFiles    []string
	dialTimeout time.Duration
}

func (o *storeOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.store, "store", string(registry.StoreBbolt), "where the relay keeps its state: bbolt (the --data file; one relay) or etcd (--etcd-endpoints; several replicas share it)")
	fs.StringSliceVar(&o.endpoints, "etcd-endpoints", nil, "with --store etcd: the etcd members' client URLs, comma-separated (https://etcd-0:2379,...)")
	fs.StringVar(&o.cert, "etcd-cert", "", "with --store etcd: PEM client certificate to present to etcd (with --etcd-key)")
	fs.StringVar(&o.key, "etcd-key", "", "with --store etcd: PEM key of --etcd-cert")
	fs.StringVar(&o.ca, "etcd-ca", "", "with --store etcd: PEM CA that signed the etcd members' certificates (default: system roots)")
	fs.StringVar(&o.prefix, "etcd-prefix", registry.DefaultEtcdPrefix, "with --store etcd: the key prefix of this relay's state (each relay deployment its own)")
	fs.StringSliceVar(&o.kekFiles, "ca-key-encryption-key-file", nil, "with --store etcd: file holding the 32-byte key that encrypts the CA's private key in etcd (raw, hex or base64; mode 0600, or 0440 as a Secret mounted with an fsGroup: group read only, nothing for others). Repeat, or comma-separate, to rotate: the first encrypts, all decrypt")
	fs.DurationVar(&o.dialTimeout, "etcd-dial-timeout", registry.DefaultEtcdDialTimeout, "with --store etcd: how long to wait for etcd at start")
}

// config returns the registry's configuration from the flags; data is the
// --data file (for bbolt).
func (o *storeOptions) config(data string, log *slog.Logger) (registry.Config, error) {
	cfg := registry.Config{Store: registry.Store(o.store), Path: data, Logger: log}
	switch cfg.Store {
	case registry.StoreBbolt:
		if len(o.endpoints) > 0 || len(o.kekFiles) > 0 || o.cert != "" || o.ca != "" {
			return registry.Config{}, errors.New("--etcd-* and --ca-key-encryption-key-file need --store etcd")
		}
	case registry.StoreEtcd:
		cfg.Path = ""
		cfg.Etcd = registry.EtcdConfig{Endpoints: o.endpoints, CertFile: o.cert, KeyFile: o.key, CAFile: o.ca, Prefix: o.prefix, DialTimeout: o.dialTimeout}
		if len(o.kekFiles) == 0 {
			return registry.Config{}, errors.New("--store etcd needs --ca-key-encryption-key-file: the CA's private key is encrypted in etcd with it (create one with `head -c 32 /dev/urandom > kek && chmod 600 kek`, and keep it out of etcd's backups)")
		}
		for _, f := range o.kekFiles {
			k, err := registry.LoadKeyEncryptionKey(f)
			if err != nil {
				return registry.Config{}, fmt.Errorf("--ca-key-encryption-key-file: %w", err)
			}
			cfg.Etcd.KeyEncryptionKeys = append(cfg.Etcd.KeyEncryptionKeys, k)
		}
	default:
		return registry.Config{}, fmt.Errorf("--store %q: want bbolt or etcd", o.store)
	}
	if err := cfg.Validate(); err != nil {
		return registry.Config{}, err
	}
	return cfg, nil
}

// newStoreCommand is `tether-relay store`: moving the relay's state
// between stores.
func newStoreCommand(data *string, opts *storeOptions) *cobra.Command {
	c := &cobra.Command{Use: "store", Short: "Move the relay's state between a bbolt file and etcd"}
	var from, to string
	var overwrite bool
	migrate := &cobra.Command{
		Use:   "migrate --from bbolt [FILE] --to etcd --etcd-endpoints ... --ca-key-encryption-key-file KEK",
		Short: "Copy a stopped relay's state (CA, clusters, credentials, policies, join tokens) into another store, and verify it",
		Long: `migrate copies everything the relay keeps from one store into another: the CA (its key
encrypted for etcd with --ca-key-encryption-key-file), every cluster with its credentials and
access policy, and every join token not yet used, still valid. Stop the relay first (the bbolt
file is locked while it runs). The target must be empty (--overwrite replaces what it holds);
it is marked while the copy runs, so no relay starts on half a copy, and read back and compared
before the mark is removed. The source is only read.

  tether-relay store migrate --from bbolt /var/lib/tether/relay.db --to etcd \
    --etcd-endpoints https://etcd-0:2379 --etcd-cert c.pem --etcd-key k.pem --etcd-ca ca.pem \
    --ca-key-encryption-key-file /etc/tether/kek

The bbolt side is FILE, or --data. --from etcd --to bbolt FILE moves back.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := *data
			if len(args) == 1 {
				file = args[0]
			}
			if from == to {
				return fmt.Errorf("--from %s --to %s: the source and the target must be different kinds of store (copy etcd to etcd with etcdctl)", from, to)
			}
			bolt := &storeOptions{store: string(registry.StoreBbolt)}
			etcd := *opts
			etcd.store = string(registry.StoreEtcd)
			var src, dst *storeOptions
			switch {
			case from == "bbolt" && to == "etcd":
				src, dst = bolt, &etcd
			case from == "etcd" && to == "bbolt":
				src, dst = &etcd, bolt
			default:
				return fmt.Errorf("--from %q --to %q: want --from bbolt --to etcd, or --from etcd --to bbolt", from, to)
			}
			if _, err := os.Stat(file); src == bolt && err != nil {
				return fmt.Errorf("the bbolt file: %w", err)
			}
			srcCfg, err := src.config(file, nil)
			if err != nil {
				return err
			}
			dstCfg, err := dst.config(file, nil)
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			rep, err := registry.Migrate(cmd.Context(), srcCfg, dstCfg, registry.MigrateOptions{Overwrite: overwrite, Logger: log})
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "migrated %d clusters and %d join tokens, and the CA, from %s to %s; verified\n", rep.Clusters, rep.JoinTokens, rep.From, rep.To)
			return err
		},
	}
	migrate.Flags().StringVar(&from, "from", "", "the source store: bbolt or etcd")
	migrate.Flags().StringVar(&to, "to", "", "the target store: etcd or bbolt")
	migrate.Flags().BoolVar(&overwrite, "overwrite", false, "replace whatever the target holds")
	_ = migrate.MarkFlagRequired("from")
	_ = migrate.MarkFlagRequired("to")
	c.AddCommand(migrate)
	return c
}
