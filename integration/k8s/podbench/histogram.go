package podbench

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Histogram is one Prometheus histogram read from a text exposition:
// cumulative counts per upper bound, +Inf last.
type Histogram struct {
	Bounds []float64 // upper bounds in seconds, ascending, +Inf last
	Counts []float64 // cumulative counts, one per bound
	Sum    float64
}

// ParseHistogram finds the histogram named name (its _bucket, _sum and
// _count samples, without labels other than le) in a Prometheus text
// exposition.
func ParseHistogram(r io.Reader, name string) (Histogram, error) {
	b, err := io.ReadAll(io.LimitReader(r, 16<<20))
	if err != nil {
		return Histogram{}, err
	}
	type bucket struct{ le, n float64 }
	var buckets []bucket
	var h Histogram
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		switch {
		case strings.HasPrefix(line, name+"_bucket{"):
			labels, value, ok := strings.Cut(strings.TrimPrefix(line, name+"_bucket{"), "} ")
			if !ok {
				return Histogram{}, fmt.Errorf("%s: bad bucket line %q", name, line)
			}
			le, ok := strings.CutPrefix(labels, `le="`)
			if !ok || !strings.HasSuffix(le, `"`) {
				return Histogram{}, fmt.Errorf("%s: bucket with labels other than le: %q", name, line)
			}
			bound, err := strconv.ParseFloat(strings.TrimSuffix(le, `"`), 64)
			if err != nil {
				return Histogram{}, fmt.Errorf("%s: bucket bound in %q: %w", name, line, err)
			}
			n, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
			if err != nil {
				return Histogram{}, fmt.Errorf("%s: bucket count in %q: %w", name, line, err)
			}
			buckets = append(buckets, bucket{bound, n})
		case strings.HasPrefix(line, name+"_sum "):
			if h.Sum, err = strconv.ParseFloat(strings.Fields(line)[1], 64); err != nil {
				return Histogram{}, fmt.Errorf("%s: sum in %q: %w", name, line, err)
			}
		}
	}
	if len(buckets) == 0 {
		return Histogram{}, fmt.Errorf("no histogram %s in the metrics", name)
	}
	sort.Slice(buckets, func(i, j int) bool { return buckets[i].le < buckets[j].le })
	if !math.IsInf(buckets[len(buckets)-1].le, 1) {
		return Histogram{}, fmt.Errorf("%s: no +Inf bucket", name)
	}
	for _, b := range buckets {
		h.Bounds = append(h.Bounds, b.le)
		h.Counts = append(h.Counts, b.n)
	}
	return h, nil
}

// Sub returns h minus an earlier reading of the same histogram: what was
// observed between the two.
func (h Histogram) Sub(earlier Histogram) (Histogram, error) {
	if len(earlier.Bounds) == 0 {
		return h, nil
	}
	if !slices.Equal(h.Bounds, earlier.Bounds) {
		return Histogram{}, fmt.Errorf("histogram buckets changed between readings")
	}
	d := Histogram{Bounds: h.Bounds, Counts: make([]float64, len(h.Counts)), Sum: h.Sum - earlier.Sum}
	for i := range h.Counts {
		d.Counts[i] = h.Counts[i] - earlier.Counts[i]
		if d.Counts[i] < 0 {
			return Histogram{}, fmt.Errorf("histogram went backwards (a restart?)")
		}
	}
	return d, nil
}

// Count is the number of observations.
func (h Histogram) Count() float64 {
	if len(h.Counts) == 0 {
		return 0
	}
	return h.Counts[len(h.Counts)-1]
}

// Quantile estimates the q-quantile (0 < q < 1) as Prometheus's
// histogram_quantile does: linear within the bucket the rank falls in,
// the lowest bucket starting at 0; a rank in the +Inf bucket gives the
// highest finite bound. Its resolution is the buckets'.
func (h Histogram) Quantile(q float64) time.Duration {
	total := h.Count()
	if total == 0 {
		return 0
	}
	rank := q * total
	i := sort.Search(len(h.Counts), func(i int) bool { return h.Counts[i] >= rank })
	if i >= len(h.Bounds)-1 {
		return seconds(h.Bounds[len(h.Bounds)-2])
	}
	lo, below := 0.0, 0.0
	if i > 0 {
		lo, below = h.Bounds[i-1], h.Counts[i-1]
	}
	in := h.Counts[i] - below
	if in == 0 {
		return seconds(h.Bounds[i])
	}
	return seconds(lo + (h.Bounds[i]-lo)*(rank-below)/in)
}

// Mean is the mean observation.
func (h Histogram) Mean() time.Duration {
	if h.Count() == 0 {
		return 0
	}
	return seconds(h.Sum / h.Count())
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// Scrape GETs a metrics URL through hc and parses the histogram name.
func Scrape(ctx context.Context, hc *http.Client, url, name string) (Histogram, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, http.NoBody)
	if err != nil {
		return Histogram{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return Histogram{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Histogram{}, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	return ParseHistogram(resp.Body, name)
}
