package report

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// Plot is a line chart, drawn as a hand-written SVG.
type Plot struct {
	// Name is the SVG file's name, without ".svg".
	Name string
	// Title heads the chart (and is the image's alt text).
	Title string
	// XLabel and YLabel name the axes, with units.
	XLabel, YLabel string
	// LogX and LogY draw that axis on a base-10 logarithmic scale (values
	// must then be positive; others are dropped).
	LogX, LogY bool
	// Series are the lines, one per contender.
	Series []Series
}

// Series is one line of a plot.
type Series struct {
	// Name is the legend's label.
	Name string
	// Points are drawn in order.
	Points []Point
}

// Point is one (x, y) value.
type Point struct{ X, Y float64 }

// palette is colour-blind-friendly (Okabe–Ito).
var palette = []string{"#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#B8A000", "#7F7F7F", "#882255"}

const (
	plotW, plotH       = 720, 420
	marginL, marginR   = 70, 170
	marginT, marginB   = 40, 50
	innerW, innerH     = plotW - marginL - marginR, plotH - marginT - marginB
	ticksX, ticksY     = 6, 5
	legendX, legendRow = plotW - marginR + 15, 18
)

// SVG renders the plot.
func (p Plot) SVG() string {
	tx := func(v float64) (float64, bool) { return scaleVal(v, p.LogX) }
	ty := func(v float64) (float64, bool) { return scaleVal(v, p.LogY) }
	minX, maxX, minY, maxY := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, s := range p.Series {
		for _, pt := range s.Points {
			x, okx := tx(pt.X)
			y, oky := ty(pt.Y)
			if !okx || !oky {
				continue
			}
			minX, maxX = math.Min(minX, x), math.Max(maxX, x)
			minY, maxY = math.Min(minY, y), math.Max(maxY, y)
		}
	}
	if math.IsInf(minX, 0) {
		minX, maxX, minY, maxY = 0, 1, 0, 1
	}
	if !p.LogY && minY > 0 {
		minY = 0
	}
	if maxX == minX {
		maxX = minX + 1
	}
	if maxY == minY {
		maxY = minY + 1
	}
	px := func(x float64) float64 { return marginL + (x-minX)/(maxX-minX)*innerW }
	py := func(y float64) float64 { return marginT + innerH - (y-minY)/(maxY-minY)*innerH }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", plotW, plotH, plotW, plotH)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", plotW, plotH)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", marginL, html.EscapeString(p.Title))
	// Axes, grid and ticks.
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>`+"\n", marginL, marginT, innerW, innerH)
	for _, v := range ticks(minX, maxX, ticksX, p.LogX) {
		x := px(v)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", x, marginT, x, marginT+innerH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, marginT+innerH+16, tickLabel(v, p.LogX))
	}
	for _, v := range ticks(minY, maxY, ticksY, p.LogY) {
		y := py(v)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", marginL, y, marginL+innerW, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", marginL-6, y+4, tickLabel(v, p.LogY))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", marginL+innerW/2, plotH-12, html.EscapeString(p.XLabel))
	fmt.Fprintf(&b, `<text transform="translate(16,%d) rotate(-90)" text-anchor="middle">%s</text>`+"\n", marginT+innerH/2, html.EscapeString(p.YLabel))
	// Lines and legend.
	for i, s := range p.Series {
		colour := palette[i%len(palette)]
		var pts []string
		for _, pt := range s.Points {
			x, okx := tx(pt.X)
			y, oky := ty(pt.Y)
			if okx && oky {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(x), py(y)))
			}
		}
		if len(pts) == 1 {
			fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", strings.Split(pts[0], ",")[0], strings.Split(pts[0], ",")[1], colour)
		} else if len(pts) > 1 {
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", colour, strings.Join(pts, " "))
		}
		if len(s.Points) <= 12 {
			for _, q := range pts {
				xy := strings.Split(q, ",")
				fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", xy[0], xy[1], colour)
			}
		}
		ly := marginT + 10 + i*legendRow
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", legendX, ly, legendX+22, ly, colour)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", legendX+28, ly+4, html.EscapeString(s.Name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// ticks returns where to put about n ticks between lo and hi (on a log
// axis, exponents): round values, 1, 2 and 5 times a power of ten.
func ticks(lo, hi float64, n int, log bool) []float64 {
	var out []float64
	if log {
		for e := math.Floor(lo); e <= math.Ceil(hi); e++ {
			for _, m := range []float64{1, 2, 5} {
				if v := e + math.Log10(m); v >= lo-1e-9 && v <= hi+1e-9 {
					out = append(out, v)
				}
			}
		}
		if len(out) >= 2 {
			return out
		}
		return []float64{lo, hi}
	}
	raw := (hi - lo) / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	for v := math.Ceil(lo/step) * step; v <= hi+step*1e-9; v += step {
		out = append(out, v)
	}
	return out
}

// scaleVal maps v to the axis' scale; false when a log axis cannot show it.
func scaleVal(v float64, log bool) (float64, bool) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, false
	}
	if !log {
		return v, true
	}
	if v <= 0 {
		return 0, false
	}
	return math.Log10(v), true
}

// tickLabel formats an axis value (on a log axis, v is the exponent).
func tickLabel(v float64, log bool) string {
	if log {
		v = math.Pow(10, v)
	}
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a >= 1e6:
		return fmt.Sprintf("%.3gM", v/1e6)
	case a >= 1e3:
		return fmt.Sprintf("%.3gk", v/1e3)
	case a >= 10:
		return fmt.Sprintf("%.0f", v)
	case a >= 1:
		return fmt.Sprintf("%.2g", v)
	}
	return fmt.Sprintf("%.2g", v)
}
