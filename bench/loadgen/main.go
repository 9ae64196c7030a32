// Command loadgen drives one unary gRPC method for bench.serving: as hard as a fixed number of callers can
// (closed loop, the default), or at a fixed arrival rate (open loop, -rate).
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
//
// Open loop (-rate R): call i is due at start + i/R (-arrivals uniform, as ghz --rps and wrk2 -R; or poisson:
// exponential gaps of mean 1/R, seeded). A dispatcher hands each call to the -c callers when it is due; when all
// of them are busy, due calls wait for the next free caller. Latency counts from the
// due time, not from the send (so queueing in the client is not hidden: no coordinated omission); the latency
// from the send ("service"), and how late calls went out ("send lag"), are reported beside it. Before the clock
// starts every connection carries one call, so no call of the run pays for a connection's set-up. Ties between
// connections with as few calls in flight go round-robin: at an offered rate most connections are idle, and the
// lowest-numbered one would carry nearly every call (and so one server process).
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
	"math/rand"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
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

// dispatch hands the callers each call's index once it is due (all that are due when it wakes), then closes
// tickets. It sleeps on a timerfd read through Go's network poller: that wakes within microseconds, where a
// time.Sleep on an idle runtime waits in epoll with a timeout in whole milliseconds (up to 1 ms late).
func dispatch(start time.Time, due []time.Duration, tickets chan<- int) {
	defer close(tickets)
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen: timerfd:", err)
		os.Exit(1)
	}
	timer := os.NewFile(uintptr(fd), "timerfd")
	defer timer.Close()
	expirations := make([]byte, 8)
	for i := 0; i < len(due); {
		if wait := time.Until(start.Add(due[i])); wait > 0 {
			spec := unix.ItimerSpec{Value: unix.NsecToTimespec(wait.Nanoseconds())}
			if err := unix.TimerfdSettime(fd, 0, &spec, nil); err != nil {
				fmt.Fprintln(os.Stderr, "loadgen: timerfd:", err)
				os.Exit(1)
			}
			if _, err := timer.Read(expirations); err != nil {
				fmt.Fprintln(os.Stderr, "loadgen: timerfd:", err)
				os.Exit(1)
			}
		}
		for now := time.Since(start); i < len(due) && due[i] <= now; i++ {
			tickets <- i
		}
	}
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
	rate := flag.Float64("rate", 0, "open loop: calls due per second (0: closed loop, each caller calls again at once)")
	arrivals := flag.String("arrivals", "uniform", "open loop: due times evenly spaced (uniform) or a Poisson process (poisson)")
	flag.Parse()

	msgs, err := readMessages(*data)
	if err == nil && len(msgs) == 0 {
		err = fmt.Errorf("%s holds no requests", *data)
	}
	if err != nil || *method == "" || *callers < 1 || *conns < 1 || *rate < 0 || (*arrivals != "uniform" && *arrivals != "poisson") {
		fmt.Fprintln(os.Stderr, "loadgen:", err, "(needs -method, -data, -c >= 1, -conns >= 1, -rate >= 0, -arrivals uniform|poisson)")
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
	var turn atomic.Int64
	pick := func() int {
		best := 0
		if *rate > 0 { // round-robin among the least busy (see the package comment)
			best = int(turn.Add(1) % int64(len(inFlight)))
		}
		for j := 1; j < len(inFlight); j++ {
			i := j
			if *rate > 0 {
				i = (best + j) % len(inFlight)
			}
			if inFlight[i].Load() < inFlight[best].Load() {
				best = i
			}
		}
		return best
	}
	call := func(c int, req []byte) error {
		var resp []byte
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		inFlight[c].Add(1)
		defer inFlight[c].Add(-1)
		return clients[c].Invoke(ctx, *method, &req, &resp)
	}

	var due []time.Duration // open loop: call i's due time after the start
	if *rate > 0 {
		for c := range clients { // connect each before the clock starts
			if err := call(c, msgs[c%len(msgs)]); err != nil {
				fmt.Fprintln(os.Stderr, "loadgen: warm-up call:", err)
				os.Exit(1)
			}
		}
		rng := rand.New(rand.NewSource(1))
		at := 0.0
		for at < duration.Seconds() {
			due = append(due, time.Duration(at*1e9))
			if *arrivals == "poisson" {
				at += rng.ExpFloat64() / *rate
			} else {
				at = float64(len(due)) / *rate
			}
		}
	}

	latencies := make([][]time.Duration, *callers)
	service := make([][]time.Duration, *callers)
	lags := make([][]time.Duration, *callers)
	codes := make([]map[string]int, *callers)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(*duration)
	tickets := make(chan int, len(due)+1)
	if *rate > 0 {
		go dispatch(start, due, tickets)
	}
	for w := 0; w < *callers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			codes[w] = map[string]int{}
			for j := w; ; j += *callers {
				var sched time.Time
				if *rate > 0 {
					i, open := <-tickets
					if !open {
						return
					}
					j, sched = i, start.Add(due[i])
				} else if !time.Now().Before(deadline) {
					return
				}
				c := pick()
				t0 := time.Now()
				err := call(c, msgs[j%len(msgs)])
				t1 := time.Now()
				codes[w][status.Code(err).String()]++
				if err != nil {
					continue
				}
				if *rate > 0 {
					latencies[w] = append(latencies[w], t1.Sub(sched))
					service[w] = append(service[w], t1.Sub(t0))
					lags[w] = append(lags[w], t0.Sub(sched))
				} else {
					latencies[w] = append(latencies[w], t1.Sub(t0))
				}
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()

	gather := func(per [][]time.Duration) []time.Duration {
		var all []time.Duration
		for _, l := range per {
			all = append(all, l...)
		}
		sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
		return all
	}
	all := gather(latencies)
	byCode := map[string]int{}
	for w := range codes {
		for code, n := range codes[w] {
			byCode[code] += n
		}
	}
	out := map[string]any{
		"codes": byCode, "ok": len(all), "seconds": elapsed, "qps": float64(len(all)) / elapsed,
		"p50_ms": percentile(all, 0.50), "p99_ms": percentile(all, 0.99),
	}
	if *rate > 0 {
		svc, lag := gather(service), gather(lags)
		out["mode"], out["arrivals"], out["rate"], out["due"] = "open", *arrivals, *rate, len(due)
		out["p999_ms"], out["max_ms"] = percentile(all, 0.999), percentile(all, 1)
		out["service_p50_ms"], out["service_p99_ms"] = percentile(svc, 0.50), percentile(svc, 0.99)
		out["send_lag_p50_ms"], out["send_lag_p99_ms"] = percentile(lag, 0.50), percentile(lag, 0.99)
	} else {
		out["mode"] = "closed"
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
