package store

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkAssignRelease measures one Assign plus one Release of a fresh
// attachment on the real disk (t.TempDir, not tmpfs): two durable changes,
// each a journal append and an fdatasync. It reports the latency of the
// Assign alone (the pod ADD path) as assign-p50-us and assign-p99-us.
func BenchmarkAssignRelease(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := range 250 {
		if _, err := s.AddFree("nic-0", ip(i+1)); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		o := owner(fmt.Sprintf("c%d", i))
		start := time.Now()
		if _, err := s.Assign(o); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if _, _, err := s.Release(o.Attachment()); err != nil {
			b.Fatal(err)
		}
		if i%100 == 99 {
			if _, err := s.Promote(time.Now(), 0); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "assign-p50-us")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "assign-p99-us")
}

// BenchmarkOpen measures Open of a store with 250 records and a journal of
// about DefaultCompactBytes (the worst case before a compaction): the daemon's
// start-up replay.
func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 250 {
		if _, err := s.AddFree("nic-0", ip(i+1)); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; s.Stats().JournalBytes < DefaultCompactBytes*9/10; i++ {
		o := owner(fmt.Sprintf("c%d", i))
		if _, err := s.Assign(o); err != nil {
			b.Fatal(err)
		}
		if _, _, err := s.Release(o.Attachment()); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Promote(time.Now(), 0); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 125 {
		if _, err := s.Assign(owner(fmt.Sprintf("pod%d", i))); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		s, err := Open(dir, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
