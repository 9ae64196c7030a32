// Command loadgen drives one unary gRPC method as hard as a fixed number of callers can, for bench.serving.
//
// It exists because the client shares the benchmark machine's cores with the server: ghz spends about 170 us
// of CPU per call (JSON templating, dynamic messages), this about 100 us (pre-serialised requests, raw bytes),
// and every microsecond the client saves is left to the server. It sends the length-prefixed (varint)
// serialised requests of -data round-robin from -c callers for -duration, then prints one JSON object: calls
// per status code, calls/s, and p50/p99 latency of the OK calls.
//
// Each call goes to the one of -conns connections with the fewest calls in flight (least-request balancing, as
// a proxy or a gRPC client with several subchannels does). That evens out calls over connections, not over the
// server processes behind them: the kernel's SO_REUSEPORT hash of 8 connections over 2 processes sometimes gave
// one process most or all of them, and the run measured one process instead of two. bench.serving opens 32.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// rawCodec passes serialised messages through: the benchmark needs the status, not the decoded answer.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func readMessages(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var out [][]byte
	for {
		n, err := binary.ReadUvarint(r)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: bad length prefix after %d messages: %w", path, len(out), err)
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(r, msg); err != nil {
			return nil, fmt.Errorf("%s: message %d is cut short: %w", path, len(out), err)
		}
		out = append(out, msg)
	}
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[int(p*float64(len(sorted)-1))].Nanoseconds()) / 1e6
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "server address")
	tlsCA := flag.String("tls-ca", "", "TLS: PEM file of the CA to trust (plaintext when empty)")
	method := flag.String("method", "", "full method name, e.g. /interest.v1.InterestService/SimilarItems")
	data := flag.String("data", "", "file of varint-length-prefixed serialised requests")
	callers := flag.Int("c", 16, "concurrent callers")
	conns := flag.Int("conns", 8, "connections (each call takes the one with the fewest calls in flight)")
	duration := flag.Duration("duration", 6*time.Second, "how long to call")
	timeout := flag.Duration("timeout", 5*time.Second, "deadline of each call")
	flag.Parse()

	msgs, err := readMessages(*data)
	if err == nil && len(msgs) == 0 {
		err = fmt.Errorf("%s holds no requests", *data)
	}
	if err != nil || *method == "" || *callers < 1 || *conns < 1 {
		fmt.Fprintln(os.Stderr, "loadgen:", err, "(needs -method, -data, -c >= 1, -conns >= 1)")
		os.Exit(2)
	}
	creds := insecure.NewCredentials()
	if *tlsCA != "" {
		if creds, err = credentials.NewClientTLSFromFile(*tlsCA, ""); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(2)
		}
	}
	clients := make([]*grpc.ClientConn, *conns)
	for i := range clients {
		clients[i], err = grpc.NewClient(*addr, grpc.WithTransportCredentials(creds),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(2)
		}
		defer clients[i].Close()
	}

	inFlight := make([]atomic.Int64, len(clients))
	pick := func() int {
		best := 0
		for i := 1; i < len(inFlight); i++ {
			if inFlight[i].Load() < inFlight[best].Load() {
				best = i
			}
		}
		return best
	}

	latencies := make([][]time.Duration, *callers)
	codes := make([]map[string]int, *callers)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(*duration)
	for w := 0; w < *callers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			codes[w] = map[string]int{}
			for j := w; time.Now().Before(deadline); j += *callers {
				req := msgs[j%len(msgs)]
				var resp []byte
				ctx, cancel := context.WithTimeout(context.Background(), *timeout)
				c := pick()
				inFlight[c].Add(1)
				t0 := time.Now()
				err := clients[c].Invoke(ctx, *method, &req, &resp)
				took := time.Since(t0)
				inFlight[c].Add(-1)
				cancel()
				codes[w][status.Code(err).String()]++
				if err == nil {
					latencies[w] = append(latencies[w], took)
				}
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()

	var all []time.Duration
	byCode := map[string]int{}
	for w := range latencies {
		all = append(all, latencies[w]...)
		for code, n := range codes[w] {
			byCode[code] += n
		}
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"codes": byCode, "ok": len(all), "seconds": elapsed, "qps": float64(len(all)) / elapsed,
		"p50_ms": percentile(all, 0.50), "p99_ms": percentile(all, 0.99),
	})
}
