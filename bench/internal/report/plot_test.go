package report

import (
	"encoding/xml"
	"io"
	"strings"
	"testing"
)

// TestSVGIsWellFormed: every plot, log axes and awkward values included,
// is XML a browser can show.
func TestSVGIsWellFormed(t *testing.T) {
	plots := []Plot{
		{Name: "a", Title: "latency <CDF> & more", XLabel: "µs", YLabel: "share", LogX: true,
			Series: []Series{{Name: "direct", Points: []Point{{100, 0.1}, {200, 1}}}, {Name: "zero & negative", Points: []Point{{0, 0.5}, {-1, 1}}}}},
		{Name: "b", Title: "empty"},
		{Name: "c", Title: "one point", LogY: true, Series: []Series{{Name: "x", Points: []Point{{10, 5}}}}},
	}
	for _, p := range plots {
		svg := p.SVG()
		d := xml.NewDecoder(strings.NewReader(svg))
		for {
			_, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("plot %s: %v\n%s", p.Name, err, svg)
			}
		}
		if !strings.Contains(svg, "<svg") || strings.Contains(svg, "NaN") {
			t.Errorf("plot %s: not a usable SVG:\n%s", p.Name, svg)
		}
	}
}
