package harness

import (
	"slices"
	"testing"
)

func TestRunOrderPutsW5BeforeBulkTransfers(t *testing.T) {
	got := inRunOrder(Workloads)
	if !slices.Equal(got, runOrder) {
		t.Fatalf("inRunOrder(%v) = %v, want %v", Workloads, got, runOrder)
	}
	if i, j := slices.Index(got, "W5"), slices.Index(got, "W3"); i > j {
		t.Fatalf("W5 runs after W3: %v", got)
	}
	if got := inRunOrder([]string{"W4", "W5", "W9"}); !slices.Equal(got, []string{"W5", "W4", "W9"}) {
		t.Fatalf("inRunOrder(W4, W5, W9) = %v, want [W5 W4 W9]", got)
	}
	if !slices.IsSortedFunc(Workloads, func(a, b string) int { return inReportOrder(a) - inReportOrder(b) }) {
		t.Fatal("Workloads is not in report order")
	}
}
