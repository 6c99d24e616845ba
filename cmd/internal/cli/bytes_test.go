package cli

import "testing"

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		bad  bool
	}{
		{in: "262144", want: 262144},
		{in: "256Ki", want: 256 << 10},
		{in: "4Mi", want: 4 << 20},
		{in: "4MiB", want: 4 << 20},
		{in: "2Gi", want: 2 << 30},
		{in: "", bad: true},
		{in: "4M", bad: true},
		{in: "-1", bad: true},
		{in: "1.5Gi", bad: true},
		{in: "99999999999Ti", bad: true},
	}
	for _, tc := range tests {
		got, err := ParseBytes(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && got != tc.want) {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d (bad: %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
	b := Bytes(4 << 20)
	if b.String() != "4Mi" {
		t.Errorf("Bytes(4Mi).String() = %q", b.String())
	}
}
