package pool

// Room is how many more addresses one interface can take.
type Room struct {
	// Interface is the provider's ID of the interface.
	Interface string
	// Free is the number of addresses it can still take: its limit minus
	// every address it holds. Values below zero count as zero.
	Free int
}

// Share is the part of an allocation that one interface takes, in one
// cloud update.
type Share struct {
	Interface string
	Count     int
}

// Spread splits an allocation of n addresses over interfaces in the order
// given, each filled before the next one is used, and returns the part that
// fits on none of them. The daemon passes the interfaces by device index,
// so an interface attached later stays empty as long as the earlier ones
// have room: it can be detached again once its pods are gone.
func Spread(rooms []Room, n int) (shares []Share, rest int) {
	rest = max(n, 0)
	for _, r := range rooms {
		if rest == 0 {
			break
		}
		if k := min(max(r.Free, 0), rest); k > 0 {
			shares = append(shares, Share{Interface: r.Interface, Count: k})
			rest -= k
		}
	}
	return shares, rest
}
