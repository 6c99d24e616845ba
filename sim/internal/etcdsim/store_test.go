package etcdsim_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tether-k8s/tether/sim/internal/etcdsim"
)

// TestEtcdSemantics checks, on virtual time, the behaviour tether relies
// on: revisions, ranges at a past revision, a compare-and-swap
// transaction, a watch resumed from a revision, a lease whose keys go when
// it lapses, and a client cut from the store.
func TestEtcdSemantics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := etcdsim.New()
		defer s.Close()
		a, b := s.Client("a"), s.Client("b")
		defer a.Close()
		defer b.Close()
		ctx := context.Background()

		p1, err := a.Put(ctx, "/p/x", "1")
		if err != nil || p1.Header.Revision != 2 {
			t.Fatalf("first put: rev %v, %v; want revision 2", p1, err)
		}
		p2, _ := a.Put(ctx, "/p/x", "2")
		old, _ := b.Get(ctx, "/p/x", clientv3.WithRev(p1.Header.Revision))
		if string(old.Kvs[0].Value) != "1" || old.Kvs[0].Version != 1 {
			t.Fatalf("range at revision %d: %v", p1.Header.Revision, old.Kvs)
		}
		// A transaction comparing a stale revision fails and writes nothing.
		tr, err := b.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("/p/x"), "=", p1.Header.Revision)).Then(clientv3.OpPut("/p/x", "3")).Commit()
		if err != nil || tr.Succeeded {
			t.Fatalf("stale compare: %v, %v; want it to fail", tr, err)
		}
		tr, _ = b.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("/p/"), "<", p2.Header.Revision+1).WithPrefix()).Then(clientv3.OpPut("/p/y", "y")).Commit()
		if !tr.Succeeded {
			t.Fatal("prefix compare that holds failed")
		}
		// A watch from an old revision replays what happened since.
		wctx, cancel := context.WithCancel(ctx)
		wch := b.Watch(wctx, "/p/", clientv3.WithPrefix(), clientv3.WithRev(p2.Header.Revision))
		wr := <-wch
		if len(wr.Events) != 2 || string(wr.Events[0].Kv.Value) != "2" || string(wr.Events[1].Kv.Key) != "/p/y" {
			t.Fatalf("watch from revision %d: %v", p2.Header.Revision, wr.Events)
		}
		// A lease kept alive holds its key; cut from the store, the
		// keep-alive channel closes and the key goes after the TTL.
		l, _ := a.Grant(ctx, 2)
		if _, err := a.Put(ctx, "/p/l", "v", clientv3.WithLease(l.ID)); err != nil {
			t.Fatal(err)
		}
		ka, _ := a.KeepAlive(ctx, l.ID)
		time.Sleep(10 * time.Second)
		if g, _ := b.Get(ctx, "/p/l"); len(g.Kvs) != 1 {
			t.Fatal("a key under a lease kept alive went")
		}
		s.Cut("a", true)
		start := time.Now()
		for range ka {
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("keep-alive channel closed %s after the cut, want within the TTL", d)
		}
		time.Sleep(2 * time.Second)
		if g, _ := b.Get(ctx, "/p/l"); len(g.Kvs) != 0 {
			t.Fatal("a key under a lapsed lease is still there")
		}
		var evs []*clientv3.Event
		for len(evs) < 2 {
			wr := <-wch
			evs = append(evs, wr.Events...)
		}
		if len(evs) != 2 || evs[0].Type != clientv3.EventTypePut || evs[1].Type != clientv3.EventTypeDelete {
			t.Fatalf("watch: %v, want the put and the lease's delete", evs)
		}
		// A cut client's request waits for its deadline.
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		if _, err := a.Get(rctx, "/p/x"); err != context.DeadlineExceeded {
			t.Fatalf("get while cut: %v, want the deadline", err)
		}
		rcancel()
		s.Cut("a", false)
		if _, err := a.Get(ctx, "/p/x"); err != nil {
			t.Fatalf("get once healed: %v", err)
		}
		cancel()
		for range wch {
		}
	})
}
