package etcdsim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Store is the shared etcd: every client's requests apply to it in one
// order, each write at the next revision.
type Store struct {
	mu      sync.Mutex
	rev     int64
	kvs     map[string]*mvccpb.KeyValue // the current value of each key
	history []change                    // every change, in revision order
	leases  map[clientv3.LeaseID]*lease
	lastID  clientv3.LeaseID
	changed chan struct{} // closed and replaced on every write
	cut     map[string]chan struct{}
	closed  bool
}

// change is one key's put or delete at a revision.
type change struct {
	rev     int64
	kv      *mvccpb.KeyValue
	deleted bool
}

type lease struct {
	id    clientv3.LeaseID
	ttl   int64
	timer *time.Timer
	keys  map[string]bool
}

// New returns an empty store at revision 1 (etcd's first revision).
func New() *Store {
	return &Store{rev: 1, kvs: map[string]*mvccpb.KeyValue{}, leases: map[clientv3.LeaseID]*lease{},
		changed: make(chan struct{}), cut: map[string]chan struct{}{}}
}

// Close stops the store's lease timers.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, l := range s.leases {
		l.timer.Stop()
	}
}

// Cut cuts the clients named name from the store (on true) or heals them.
func (s *Store) Cut(name string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	heal, cut := s.cut[name]
	switch {
	case on && !cut:
		s.cut[name] = make(chan struct{})
	case !on && cut:
		close(heal)
		delete(s.cut, name)
	}
}

// reachable returns nil when name reaches the store, else a channel closed
// when the cut heals.
func (s *Store) reachable(name string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cut[name]
}

// wait blocks a request of name until it reaches the store or ctx ends.
func (s *Store) wait(ctx context.Context, name string) error {
	for {
		heal := s.reachable(name)
		if heal == nil {
			return ctx.Err()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-heal:
		}
	}
}

func (s *Store) header() *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: 1, MemberId: 1, Revision: s.rev, RaftTerm: 1}
}

// inRange reports whether key is in etcd's range [start, end): end nil is
// start alone, end "\x00" every key from start on.
func inRange(key, start, end []byte) bool {
	switch {
	case len(end) == 0:
		return bytes.Equal(key, start)
	case len(end) == 1 && end[0] == 0:
		return bytes.Compare(key, start) >= 0
	}
	return bytes.Compare(key, start) >= 0 && bytes.Compare(key, end) < 0
}

// at returns the keys in [start, end) as they were at rev, sorted. s.mu is
// held.
func (s *Store) at(start, end []byte, rev int64) []*mvccpb.KeyValue {
	var out []*mvccpb.KeyValue
	if rev == 0 || rev == s.rev {
		for _, kv := range s.kvs {
			if inRange(kv.Key, start, end) {
				out = append(out, kv)
			}
		}
	} else {
		m := map[string]*mvccpb.KeyValue{}
		for _, c := range s.history {
			if c.rev > rev {
				break
			}
			if !inRange(c.kv.Key, start, end) {
				continue
			}
			if c.deleted {
				delete(m, string(c.kv.Key))
			} else {
				m[string(c.kv.Key)] = c.kv
			}
		}
		for _, kv := range m {
			out = append(out, kv)
		}
	}
	slices.SortFunc(out, func(a, b *mvccpb.KeyValue) int { return bytes.Compare(a.Key, b.Key) })
	return out
}

// rangeLocked serves a Get.
func (s *Store) rangeLocked(op clientv3.Op) (*clientv3.GetResponse, error) {
	if op.Rev() > s.rev {
		return nil, rpctypes.ErrFutureRev
	}
	kvs := s.at(op.KeyBytes(), op.RangeBytes(), op.Rev())
	resp := &clientv3.GetResponse{Header: s.header(), Count: int64(len(kvs))}
	if op.IsCountOnly() {
		return resp, nil
	}
	if l := op.Limit(); l > 0 && int64(len(kvs)) > l {
		kvs, resp.More = kvs[:l], true
	}
	for _, kv := range kvs {
		c := *kv
		if op.IsKeysOnly() {
			c.Value = nil
		}
		resp.Kvs = append(resp.Kvs, &c)
	}
	return resp, nil
}

// leaseOf reads the lease an OpPut carries: clientv3.Op has no accessor
// for it, so it is read by reflection (reading an unexported field is
// allowed; nothing is written).
func leaseOf(op clientv3.Op) clientv3.LeaseID {
	return clientv3.LeaseID(reflect.ValueOf(op).FieldByName("leaseID").Int())
}

// putLocked applies a put at revision rev (a transaction's writes share
// one).
func (s *Store) putLocked(op clientv3.Op, rev int64) error {
	key := string(op.KeyBytes())
	id := leaseOf(op)
	if id != 0 && s.leases[id] == nil {
		return rpctypes.ErrLeaseNotFound
	}
	kv := &mvccpb.KeyValue{Key: []byte(key), Value: slices.Clone(op.ValueBytes()), ModRevision: rev, CreateRevision: rev, Version: 1, Lease: int64(id)}
	if old := s.kvs[key]; old != nil {
		kv.CreateRevision, kv.Version = old.CreateRevision, old.Version+1
		if l := s.leases[clientv3.LeaseID(old.Lease)]; l != nil {
			delete(l.keys, key)
		}
	}
	if id != 0 {
		s.leases[id].keys[key] = true
	}
	s.kvs[key] = kv
	s.history = append(s.history, change{rev: rev, kv: kv})
	return nil
}

// deleteLocked deletes a range at revision rev and returns how many keys.
func (s *Store) deleteLocked(start, end []byte, rev int64) int64 {
	n := int64(0)
	for _, kv := range s.at(start, end, 0) {
		key := string(kv.Key)
		if l := s.leases[clientv3.LeaseID(kv.Lease)]; l != nil {
			delete(l.keys, key)
		}
		delete(s.kvs, key)
		s.history = append(s.history, change{rev: rev, kv: &mvccpb.KeyValue{Key: kv.Key, ModRevision: rev}, deleted: true})
		n++
	}
	return n
}

// commitLocked ends a write: the revision is taken if anything changed, and
// the watches woken.
func (s *Store) commitLocked(wrote bool) {
	if !wrote {
		return
	}
	s.rev++
	close(s.changed)
	s.changed = make(chan struct{})
}

// compare evaluates one transaction comparison as etcd does: every key of
// its range must satisfy it, and a missing key compares as a zero value
// (but fails a value comparison).
func (s *Store) compare(c clientv3.Cmp) bool {
	pc := pb.Compare(c)
	kvs := s.at(pc.Key, pc.RangeEnd, 0)
	if len(kvs) == 0 {
		if pc.Target == pb.Compare_VALUE {
			return false
		}
		kvs = []*mvccpb.KeyValue{{}}
	}
	for _, kv := range kvs {
		var r int
		switch pc.Target {
		case pb.Compare_VERSION:
			r = cmpInt(kv.Version, pc.GetVersion())
		case pb.Compare_CREATE:
			r = cmpInt(kv.CreateRevision, pc.GetCreateRevision())
		case pb.Compare_MOD:
			r = cmpInt(kv.ModRevision, pc.GetModRevision())
		case pb.Compare_VALUE:
			r = bytes.Compare(kv.Value, pc.GetValue())
		case pb.Compare_LEASE:
			r = cmpInt(kv.Lease, pc.GetLease())
		}
		ok := false
		switch pc.Result {
		case pb.Compare_EQUAL:
			ok = r == 0
		case pb.Compare_NOT_EQUAL:
			ok = r != 0
		case pb.Compare_GREATER:
			ok = r > 0
		case pb.Compare_LESS:
			ok = r < 0
		}
		if !ok {
			return false
		}
	}
	return true
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// txnLocked runs a transaction at one revision.
func (s *Store) txnLocked(cmps []clientv3.Cmp, then, els []clientv3.Op) (*clientv3.TxnResponse, error) {
	ok := true
	for _, c := range cmps {
		ok = ok && s.compare(c)
	}
	ops := then
	if !ok {
		ops = els
	}
	rev, wrote := s.rev+1, false
	resp := &clientv3.TxnResponse{Succeeded: ok}
	for _, op := range ops {
		switch {
		case op.IsPut():
			if err := s.putLocked(op, rev); err != nil {
				return nil, err
			}
			wrote = true
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: &pb.PutResponse{}}})
		case op.IsDelete():
			n := s.deleteLocked(op.KeyBytes(), op.RangeBytes(), rev)
			wrote = wrote || n > 0
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: &pb.DeleteRangeResponse{Deleted: n}}})
		case op.IsGet():
			g, err := s.rangeLocked(op)
			if err != nil {
				return nil, err
			}
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: (*pb.RangeResponse)(g)}})
		default:
			return nil, errors.New("etcdsim: nested transactions are not simulated")
		}
	}
	s.commitLocked(wrote)
	resp.Header = s.header()
	return resp, nil
}

// grant creates a lease that lapses ttl seconds from now unless kept
// alive.
func (s *Store) grant(ttl int64) (*clientv3.LeaseGrantResponse, error) {
	if ttl <= 0 {
		return nil, rpctypes.ErrLeaseTTLTooLarge
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastID++
	l := &lease{id: s.lastID, ttl: ttl, keys: map[string]bool{}}
	id := l.id
	l.timer = time.AfterFunc(time.Duration(ttl)*time.Second, func() { _ = s.revoke(id) })
	s.leases[id] = l
	return &clientv3.LeaseGrantResponse{ResponseHeader: s.header(), ID: id, TTL: ttl}, nil
}

// revoke deletes a lease and its keys, at one revision.
func (s *Store) revoke(id clientv3.LeaseID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.leases[id]
	if l == nil {
		return rpctypes.ErrLeaseNotFound
	}
	l.timer.Stop()
	delete(s.leases, id)
	rev, wrote := s.rev+1, false
	keys := make([]string, 0, len(l.keys))
	for k := range l.keys {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		wrote = s.deleteLocked([]byte(k), nil, rev) > 0 || wrote
	}
	s.commitLocked(wrote)
	return nil
}

// renew restarts a lease's TTL; it returns 0 for a lease that is gone.
func (s *Store) renew(id clientv3.LeaseID) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.leases[id]
	if l == nil || s.closed {
		return 0
	}
	l.timer.Reset(time.Duration(l.ttl) * time.Second)
	return l.ttl
}

// events returns the changes in [start, end) from revision from on, and
// the channel closed at the next write.
func (s *Store) events(start, end []byte, from int64) ([]*clientv3.Event, int64, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, _ := slices.BinarySearchFunc(s.history, from, func(c change, rev int64) int { return cmpInt(c.rev, rev) })
	var out []*clientv3.Event
	for _, c := range s.history[i:] {
		if !inRange(c.kv.Key, start, end) {
			continue
		}
		ev := &clientv3.Event{Type: mvccpb.PUT, Kv: c.kv}
		if c.deleted {
			ev.Type = mvccpb.DELETE
		}
		out = append(out, ev)
	}
	return out, s.rev, s.changed
}

// String names the store in messages.
func (s *Store) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("etcdsim at revision %d, %d keys, %d leases", s.rev, len(s.kvs), len(s.leases))
}
