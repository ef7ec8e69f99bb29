// Command noop does nothing: the reference for the cost of exec'ing a static
// Go binary in the protocol benchmark.
package main

func main() {}
