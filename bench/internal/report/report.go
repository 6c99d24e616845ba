package report

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Report is the whole benchmark's outcome.
type Report struct {
	// Title heads the document.
	Title string
	// Preamble is markdown written before the sections (machine, versions).
	Preamble []string
	// Sections are the workloads, in order.
	Sections []*Section
}

// Section is one workload's results.
type Section struct {
	// ID is the workload's short name ("W1").
	ID string
	// Title says what it measures.
	Title string
	// Intro is markdown: how it was measured.
	Intro string
	// Tables hold the figures.
	Tables []Table
	// Plots are drawn as SVG files next to the markdown.
	Plots []Plot
	// Notes are markdown bullet points after the tables.
	Notes []string
}

// Table is a markdown table.
type Table struct {
	// Caption is a line of markdown above the table (may be empty).
	Caption string
	// Header names the columns.
	Header []string
	// Rows hold the cells, as many as Header.
	Rows [][]string
}

// Write writes the report as markdown to path and its plots as SVG files
// in the same directory, named "<report name>-<plot name>.svg"
// (docs/benchmarks-w1-latency-cdf.svg), which the markdown links.
func (r *Report) Write(path string) error {
	dir := filepath.Dir(path)
	prefix := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path)) + "-"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n\n", r.Title)
	for _, p := range r.Preamble {
		b.WriteString(p)
		b.WriteString("\n\n")
	}
	for _, s := range r.Sections {
		fmt.Fprintf(&b, "## %s: %s\n\n", s.ID, s.Title)
		if s.Intro != "" {
			b.WriteString(s.Intro)
			b.WriteString("\n\n")
		}
		for _, t := range s.Tables {
			t.markdown(&b)
		}
		for _, n := range s.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
		if len(s.Notes) > 0 {
			b.WriteString("\n")
		}
		for _, p := range s.Plots {
			file := prefix + p.Name + ".svg"
			if err := os.WriteFile(filepath.Join(dir, file), []byte(p.SVG()), 0o644); err != nil {
				return fmt.Errorf("report: plot %s: %w", p.Name, err)
			}
			fmt.Fprintf(&b, "![%s](%s)\n\n", p.Title, file)
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

func (t Table) markdown(b *strings.Builder) {
	if t.Caption != "" {
		b.WriteString(t.Caption)
		b.WriteString("\n\n")
	}
	row := func(cells []string) {
		b.WriteString("|")
		for _, c := range cells {
			b.WriteString(" ")
			b.WriteString(strings.ReplaceAll(c, "|", "\\|"))
			b.WriteString(" |")
		}
		b.WriteString("\n")
	}
	row(t.Header)
	sep := make([]string, len(t.Header))
	for i := range sep {
		sep[i] = "---"
	}
	row(sep)
	for _, r := range t.Rows {
		row(r)
	}
	b.WriteString("\n")
}
