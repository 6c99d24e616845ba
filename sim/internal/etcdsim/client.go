package etcdsim

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Client returns a client of the store named name (Cut cuts every client of
// a name): a *clientv3.Client whose KV, Lease and Watcher are the store's.
// Its Close ends its watches and keep-alives and waits for them.
func (s *Store) Client(name string) *clientv3.Client {
	ctx, cancel := context.WithCancel(context.Background())
	c := &client{s: s, name: name, ctx: ctx, cancel: cancel}
	cli := clientv3.NewCtxClient(context.Background())
	cli.KV, cli.Lease, cli.Watcher = c, c, c
	return cli
}

// client is one replica's connection to the store: its KV, Lease and
// Watcher.
type client struct {
	s      *Store
	name   string
	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the watch and keep-alive goroutines
	once   sync.Once
}

var (
	_ clientv3.KV      = (*client)(nil)
	_ clientv3.Lease   = (*client)(nil)
	_ clientv3.Watcher = (*client)(nil)
)

// reach waits until the request reaches the store (see Store.Cut).
func (c *client) reach(ctx context.Context) error {
	if c.ctx.Err() != nil {
		return errors.New("etcdsim: client closed")
	}
	return c.s.wait(ctx, c.name)
}

// Put implements clientv3.KV.
func (c *client) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	r, err := c.Do(ctx, clientv3.OpPut(key, val, opts...))
	return r.Put(), err
}

// Get implements clientv3.KV.
func (c *client) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	r, err := c.Do(ctx, clientv3.OpGet(key, opts...))
	return r.Get(), err
}

// Delete implements clientv3.KV.
func (c *client) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	r, err := c.Do(ctx, clientv3.OpDelete(key, opts...))
	return r.Del(), err
}

// Compact implements clientv3.KV: the store keeps every revision.
func (c *client) Compact(context.Context, int64, ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	return nil, errors.New("etcdsim: compaction is not simulated")
}

// Do implements clientv3.KV.
func (c *client) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	if err := c.reach(ctx); err != nil {
		return clientv3.OpResponse{}, err
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case op.IsGet():
		r, err := s.rangeLocked(op)
		if err != nil {
			return clientv3.OpResponse{}, err
		}
		return r.OpResponse(), nil
	case op.IsPut():
		if err := s.putLocked(op, s.rev+1); err != nil {
			return clientv3.OpResponse{}, err
		}
		s.commitLocked(true)
		return (&clientv3.PutResponse{Header: s.header()}).OpResponse(), nil
	case op.IsDelete():
		n := s.deleteLocked(op.KeyBytes(), op.RangeBytes(), s.rev+1)
		s.commitLocked(n > 0)
		return (&clientv3.DeleteResponse{Header: s.header(), Deleted: n}).OpResponse(), nil
	case op.IsTxn():
		cmps, then, els := op.Txn()
		r, err := s.txnLocked(cmps, then, els)
		if err != nil {
			return clientv3.OpResponse{}, err
		}
		return r.OpResponse(), nil
	}
	return clientv3.OpResponse{}, errors.New("etcdsim: unknown operation")
}

// Txn implements clientv3.KV.
func (c *client) Txn(ctx context.Context) clientv3.Txn { return &txn{c: c, ctx: ctx} }

type txn struct {
	c         *client
	ctx       context.Context
	cmps      []clientv3.Cmp
	then, els []clientv3.Op
}

func (t *txn) If(cs ...clientv3.Cmp) clientv3.Txn { t.cmps = append(t.cmps, cs...); return t }
func (t *txn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.then = append(t.then, ops...)
	return t
}
func (t *txn) Else(ops ...clientv3.Op) clientv3.Txn { t.els = append(t.els, ops...); return t }
func (t *txn) Commit() (*clientv3.TxnResponse, error) {
	r, err := t.c.Do(t.ctx, clientv3.OpTxn(t.cmps, t.then, t.els))
	return r.Txn(), err
}

// Grant implements clientv3.Lease.
func (c *client) Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error) {
	if err := c.reach(ctx); err != nil {
		return nil, err
	}
	return c.s.grant(ttl)
}

// Revoke implements clientv3.Lease.
func (c *client) Revoke(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	if err := c.reach(ctx); err != nil {
		return nil, err
	}
	if err := c.s.revoke(id); err != nil {
		return nil, err
	}
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return &clientv3.LeaseRevokeResponse{Header: c.s.header()}, nil
}

// TimeToLive implements clientv3.Lease (the granted TTL; the remaining one
// is not tracked).
func (c *client) TimeToLive(ctx context.Context, id clientv3.LeaseID, _ ...clientv3.LeaseOption) (*clientv3.LeaseTimeToLiveResponse, error) {
	if err := c.reach(ctx); err != nil {
		return nil, err
	}
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	r := &clientv3.LeaseTimeToLiveResponse{ResponseHeader: c.s.header(), ID: id, TTL: -1}
	if l := c.s.leases[id]; l != nil {
		r.TTL, r.GrantedTTL = l.ttl, l.ttl
	}
	return r, nil
}

// Leases implements clientv3.Lease.
func (c *client) Leases(ctx context.Context) (*clientv3.LeaseLeasesResponse, error) {
	if err := c.reach(ctx); err != nil {
		return nil, err
	}
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	r := &clientv3.LeaseLeasesResponse{ResponseHeader: c.s.header()}
	for id := range c.s.leases {
		r.Leases = append(r.Leases, clientv3.LeaseStatus{ID: id})
	}
	return r, nil
}

// KeepAliveOnce implements clientv3.Lease.
func (c *client) KeepAliveOnce(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error) {
	if err := c.reach(ctx); err != nil {
		return nil, err
	}
	ttl := c.s.renew(id)
	if ttl == 0 {
		return nil, rpctypes.ErrLeaseNotFound
	}
	return &clientv3.LeaseKeepAliveResponse{ID: id, TTL: ttl}, nil
}

// KeepAlive implements clientv3.Lease as clientv3 does: a keep-alive every
// third of the TTL; the channel closes when ctx or the client ends, when
// the store no longer has the lease, or when no keep-alive was answered
// for a TTL (the client cut from the store).
func (c *client) KeepAlive(ctx context.Context, id clientv3.LeaseID) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	ch := make(chan *clientv3.LeaseKeepAliveResponse, 16)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(ch)
		ttl := time.Duration(c.s.renew(id)) * time.Second
		if ttl == 0 && c.s.reachable(c.name) == nil {
			return
		}
		if ttl == 0 {
			ttl = time.Second // cut before the first answer: clientv3's first-keep-alive timeout is of this order
		}
		deadline := time.Now().Add(ttl)
		for {
			if c.s.reachable(c.name) == nil {
				n := c.s.renew(id)
				if n == 0 {
					return
				}
				ttl, deadline = time.Duration(n)*time.Second, time.Now().Add(time.Duration(n)*time.Second)
				select {
				case ch <- &clientv3.LeaseKeepAliveResponse{ID: id, TTL: n}:
				default: // clientv3 drops a response the reader is not ready for
				}
			} else if !time.Now().Before(deadline) {
				return
			}
			t := time.NewTimer(min(ttl/3, max(time.Until(deadline), time.Millisecond)))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-c.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}()
	return ch, nil
}

// Watch implements clientv3.Watcher: events from the revision asked for (or
// the next), one response per batch; while the client is cut nothing is
// delivered, and delivery resumes where it stopped once the cut heals.
func (c *client) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	op := clientv3.OpGet(key, opts...)
	start, end, from := op.KeyBytes(), op.RangeBytes(), op.Rev()
	if from == 0 {
		c.s.mu.Lock()
		from = c.s.rev + 1
		c.s.mu.Unlock()
	}
	ch := make(chan clientv3.WatchResponse)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(ch)
		for {
			if heal := c.s.reachable(c.name); heal != nil {
				select {
				case <-ctx.Done():
					return
				case <-c.ctx.Done():
					return
				case <-heal:
				}
				continue
			}
			evs, rev, changed := c.s.events(start, end, from)
			if len(evs) == 0 {
				select {
				case <-ctx.Done():
					return
				case <-c.ctx.Done():
					return
				case <-changed:
				}
				continue
			}
			c.s.mu.Lock()
			h := c.s.header()
			c.s.mu.Unlock()
			h.Revision = rev
			select {
			case <-ctx.Done():
				return
			case <-c.ctx.Done():
				return
			case ch <- clientv3.WatchResponse{Header: *h, Events: evs}:
			}
			from = evs[len(evs)-1].Kv.ModRevision + 1
		}
	}()
	return ch
}

// RequestProgress implements clientv3.Watcher.
func (c *client) RequestProgress(ctx context.Context) error { return c.reach(ctx) }

// Close implements clientv3.Lease and clientv3.Watcher: it ends the
// client's watches and keep-alives and waits for them.
func (c *client) Close() error {
	c.once.Do(func() {
		c.cancel()
		c.wg.Wait()
	})
	return nil
}
