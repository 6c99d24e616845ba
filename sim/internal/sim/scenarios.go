package sim

import "time"

// Scenarios are the named scenarios: exploratory ones draw their faults from
// the seed; regressions replay a fixed timeline. Add a regression for every
// bug the simulator finds (CONTRIBUTING.md says how).
var Scenarios = []*Scenario{
	{Name: "explore", Doc: "every fault, drawn from the seed, about one every two seconds", Rate: 0.5, Duration: 30 * time.Second},
	{Name: "network", Doc: "latency, bandwidth caps, stalls, resets, blackholes and partitions only", Rate: 0.6,
		Faults: []string{"latency", "bandwidth", "stall", "reset", "blackhole", "partition"}, Duration: 25 * time.Second},
	{Name: "relay-restarts", Doc: "the relay killed and drained repeatedly under traffic", Rate: 0.3,
		Faults: []string{"relay-kill", "relay-drain"}, Duration: 30 * time.Second},
	{Name: "relay-kill-mid-stream", Doc: "regression: streams in flight must end at once when the relay dies, and every cluster reconnect",
		Script: []FaultEvent{{Fault: "relay-kill", At: 4 * time.Second, For: 2 * time.Second}}, Duration: 14 * time.Second},
	{Name: "drain-under-load", Doc: "regression: a drain's GoAway moves sessions while bulk transfers run; nothing corrupt",
		Script: []FaultEvent{{Fault: "relay-drain", At: 3 * time.Second, For: time.Second}}, Duration: 12 * time.Second},
	{Name: "revoke-and-rejoin", Doc: "regression: a cluster rotated mid-traffic loses its sessions, rejoins with a new token",
		Script: []FaultEvent{{Fault: "revoke", At: 3 * time.Second, For: 2 * time.Second}}, Duration: 12 * time.Second},
	{Name: "slow-reader-and-flood", Doc: "one client stops reading while another floods: others' streams must not suffer",
		Script:   []FaultEvent{{Fault: "slow-reader", At: 2 * time.Second, For: 4 * time.Second}, {Fault: "flood", At: 3 * time.Second, For: 3 * time.Second}},
		Duration: 12 * time.Second},
	{Name: "replicas-kill-and-drain", Doc: "three replicas on one store: one killed and left down past its lease, then another drained, under traffic; no misroute, no loop, no short request lost in the drain, tables converge",
		Replicas: 3, Script: []FaultEvent{{Fault: "replica-kill", At: 2 * time.Second, For: 12 * time.Second}, {Fault: "replica-drain", At: 15 * time.Second, For: 2 * time.Second}},
		Duration: 20 * time.Second},
	{Name: "replicas-partitions", Doc: "three replicas on one store: two cut apart, then one cut from the store for longer than its lease; tables converge once healed",
		Replicas: 3, Script: []FaultEvent{{Fault: "replica-partition", At: 2 * time.Second, For: 3 * time.Second}, {Fault: "store-partition", At: 6 * time.Second, For: 7 * time.Second}},
		Duration: 16 * time.Second},
	{Name: "replicas-explore", Doc: "three replicas on one store, every fault drawn from the seed", Replicas: 3, Rate: 0.4, Duration: 25 * time.Second},
}

// ScenarioByName returns the named scenario, or nil.
func ScenarioByName(name string) *Scenario {
	for _, s := range Scenarios {
		if s.Name == name {
			return s
		}
	}
	return nil
}
