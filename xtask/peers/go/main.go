// Command goPeer speaks the stream proxy protocol the way the Go original does: TCP over
// crypto/tls, UDP over pion/dtls, both header versions, and goroutine-per-direction relays
// with io.Copy. It is test tooling for `cargo xtask interop` and `cargo xtask bench`, not part
// of the product.
//
// Roles:
//
//	goPeer server -listen ADDR -ca F -cert F -key F      TLS and DTLS on the same port number
//	              [-accept-only 0.1.0]                   refuse other header versions, as GoDoxy
//	goPeer check  -server ADDR -ca F -cert F -key F -transport tcp|udp -target HOST:PORT
//	              [-version 0.1.0.0|0.1.0] [-bytes N] [-datagrams N -size N]
//	goPeer health -server ADDR -ca F -cert F -key F -transport tcp|udp
//	goPeer echo   -tcp ADDR -udp ADDR                    echo destinations
//	goPeer header -host H -port P [-version V] [-health]  print a header in hex
//	goPeer forward -listen ADDR -server ADDR -ca F -cert F -key F -transport tcp|udp
//	              -target HOST:PORT [-version V]         client-side forwarder (benchmarks):
//	              every accepted TCP connection, or every UDP source address, gets its own
//	              tunnel to the server for TARGET
//	goPeer relay  -listen ADDR -target HOST:PORT     plain UDP relay, no tunnel (benchmarks,
//	              relay.go)
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/pion/dtls/v2"
)

const (
	streamALPN  = "godoxy-agent-stream/1"
	serverName  = "godoxy.agent"
	dialTimeout = 10 * time.Second
	hostMax     = 255
	portMax     = 5
	flagClose   = 1
)

// header builds a stream request header as the original does (NUL padding, CRC-32/IEEE
// big-endian over everything before the checksum).
func header(version, host, port string, flags byte) ([]byte, error) {
	if len(host) > hostMax {
		return nil, errors.New("host too long")
	}
	if len(port) > portMax {
		return nil, errors.New("port too long")
	}
	b := make([]byte, 8, 275)
	copy(b, version)
	b = append(b, byte(len(host)))
	h := make([]byte, hostMax)
	copy(h, host)
	b = append(b, h...)
	b = append(b, byte(len(port)))
	p := make([]byte, portMax)
	copy(p, port)
	b = append(b, p...)
	if version == "0.1.0" {
		b = append(b, flags)
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc32.ChecksumIEEE(b))
	return append(b, sum[:]...), nil
}

type request struct {
	host, port string
	health     bool
}

// acceptOnly, when set, is the one header version the server accepts (as released GoDoxy
// agents accept only 0.1.0).
var acceptOnly string

// parseHeader validates a whole header of either version.
func parseHeader(b []byte) (request, error) {
	var size int
	var version string
	switch {
	case len(b) >= 8 && bytes.Equal(b[:8], []byte("0.1.0.0\x00")):
		size, version = 274, "0.1.0.0"
	case len(b) >= 8 && bytes.Equal(b[:8], []byte("0.1.0\x00\x00\x00")):
		size, version = 275, "0.1.0"
	default:
		return request{}, errors.New("invalid header: unknown version")
	}
	if acceptOnly != "" && version != acceptOnly {
		return request{}, errors.New("invalid header")
	}
	if len(b) != size {
		return request{}, errors.New("invalid header: length")
	}
	if crc32.ChecksumIEEE(b[:size-4]) != binary.BigEndian.Uint32(b[size-4:]) {
		return request{}, errors.New("invalid header: checksum")
	}
	hl, pl := int(b[8]), int(b[264])
	if pl > portMax {
		return request{}, errors.New("invalid header: port length")
	}
	r := request{host: string(b[9 : 9+hl]), port: string(b[265 : 265+pl])}
	if size == 275 && b[270]&flagClose != 0 {
		r.health = true
	}
	return r, nil
}

// readHeader reads exactly one header from a stream.
func readHeader(r io.Reader) (request, error) {
	buf := make([]byte, 275)
	if _, err := io.ReadFull(r, buf[:8]); err != nil {
		return request{}, err
	}
	size := 274
	if bytes.Equal(buf[:8], []byte("0.1.0\x00\x00\x00")) {
		size = 275
	}
	if _, err := io.ReadFull(r, buf[8:size]); err != nil {
		return request{}, err
	}
	return parseHeader(buf[:size])
}

type pki struct {
	cert tls.Certificate
	pool *x509.CertPool
}

func loadPKI(ca, cert, key string) pki {
	c, err := tls.LoadX509KeyPair(cert, key)
	must(err)
	pem, err := os.ReadFile(ca)
	must(err)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fail("no CA certificate in " + ca)
	}
	return pki{c, pool}
}

func (p pki) tlsServer() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.pool,
		NextProtos:   []string{streamALPN},
		MinVersion:   tls.VersionTLS12,
	}
}

// withoutCert drops the client certificate (for refusal checks).
func (p pki) withoutCert() pki {
	return pki{tls.Certificate{}, p.pool}
}

func (p pki) certs() []tls.Certificate {
	if p.cert.Certificate == nil {
		return nil
	}
	return []tls.Certificate{p.cert}
}

func (p pki) tlsClient() *tls.Config {
	return &tls.Config{
		Certificates: p.certs(),
		RootCAs:      p.pool,
		ServerName:   serverName,
		NextProtos:   []string{streamALPN},
		MinVersion:   tls.VersionTLS12,
	}
}

func (p pki) dtlsConfig() *dtls.Config {
	return &dtls.Config{
		Certificates:         p.certs(),
		CipherSuites:         []dtls.CipherSuiteID{dtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		ExtendedMasterSecret: dtls.RequireExtendedMasterSecret,
		ClientAuth:           dtls.RequireAndVerifyClientCert,
		ClientCAs:            p.pool,
		RootCAs:              p.pool,
		ServerName:           serverName,
	}
}

func serve(listen string, p pki) {
	ln, err := tls.Listen("tcp", listen, p.tlsServer())
	must(err)
	port := ln.Addr().(*net.TCPAddr).Port
	udpAddr := &net.UDPAddr{IP: ln.Addr().(*net.TCPAddr).IP, Port: port}
	dl, err := dtls.Listen("udp", udpAddr, p.dtlsConfig())
	must(err)
	fmt.Printf("listening tcp=%s udp=%s\n", ln.Addr(), udpAddr)
	go func() {
		for {
			c, err := dl.Accept()
			if err != nil {
				return
			}
			go serveUDP(c)
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go serveTCP(c)
	}
}

func serveTCP(c net.Conn) {
	defer c.Close()
	r, err := readHeader(c)
	if err != nil || r.health {
		return
	}
	dst, err := net.DialTimeout("tcp", net.JoinHostPort(r.host, r.port), dialTimeout)
	if err != nil {
		return
	}
	defer dst.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.Copy(dst, c)
		dst.(*net.TCPConn).CloseWrite()
	}()
	go func() {
		defer wg.Done()
		io.Copy(c, dst)
		c.(*tls.Conn).CloseWrite()
	}()
	wg.Wait()
}

func serveUDP(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 8192)
	n, err := c.Read(buf)
	if err != nil {
		return
	}
	r, err := parseHeader(buf[:n])
	if err != nil {
		// The only change to the original: say so, so that a benchmark can count rejections.
		fmt.Fprintf(os.Stderr, "rejected session from %s: %v\n", c.RemoteAddr(), err)
		return
	}
	if r.health {
		return
	}
	dst, err := net.DialTimeout("udp", net.JoinHostPort(r.host, r.port), dialTimeout)
	if err != nil {
		return
	}
	defer dst.Close()
	go func() {
		b := make([]byte, 65535)
		for {
			n, err := dst.Read(b)
			if err != nil {
				return
			}
			if _, err := c.Write(b[:n]); err != nil {
				return
			}
		}
	}()
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		dst.Write(buf[:n])
	}
}

func dialTunnel(transport, server string, p pki, hdr []byte) (net.Conn, error) {
	var c net.Conn
	var err error
	if transport == "tcp" {
		d := &net.Dialer{Timeout: dialTimeout}
		c, err = tls.DialWithDialer(d, "tcp", server, p.tlsClient())
	} else {
		var addr *net.UDPAddr
		addr, err = net.ResolveUDPAddr("udp", server)
		if err == nil {
			c, err = dtls.Dial("udp", addr, p.dtlsConfig())
		}
	}
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(hdr); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func check(transport, server, target, version string, nbytes, datagrams, size int, p pki) error {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return err
	}
	hdr, err := header(version, host, port, 0)
	if err != nil {
		return err
	}
	c, err := dialTunnel(transport, server, p, hdr)
	if err != nil {
		return err
	}
	defer c.Close()
	rng := rand.New(rand.NewSource(42))
	if transport == "tcp" {
		data := make([]byte, nbytes)
		rng.Read(data)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Write(data)
			if err == nil {
				err = c.(*tls.Conn).CloseWrite()
			}
			errc <- err
		}()
		back, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		if err := <-errc; err != nil {
			return err
		}
		if !bytes.Equal(back, data) {
			return fmt.Errorf("echo differs: sent %d bytes, got %d", len(data), len(back))
		}
		fmt.Printf("ok tcp %d bytes\n", nbytes)
		return nil
	}
	// UDP: a window of datagrams in flight, each carrying its sequence number.
	const window = 16
	got := make([]bool, datagrams)
	buf := make([]byte, 8192)
	sent, received := 0, 0
	send := func(i int) error {
		d := make([]byte, size)
		rand.New(rand.NewSource(int64(i))).Read(d)
		binary.BigEndian.PutUint32(d, uint32(i))
		_, err := c.Write(d)
		return err
	}
	for sent < datagrams && sent < window {
		if err := send(sent); err != nil {
			return err
		}
		sent++
	}
	for received < datagrams {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("after %d of %d datagrams: %w", received, datagrams, err)
		}
		i := int(binary.BigEndian.Uint32(buf))
		want := make([]byte, size)
		rand.New(rand.NewSource(int64(i))).Read(want)
		binary.BigEndian.PutUint32(want, uint32(i))
		if i >= datagrams || got[i] || !bytes.Equal(buf[:n], want) {
			return fmt.Errorf("datagram %d corrupt or duplicated", i)
		}
		got[i] = true
		received++
		if sent < datagrams {
			if err := send(sent); err != nil {
				return err
			}
			sent++
		}
	}
	fmt.Printf("ok udp %d datagrams of %d bytes\n", datagrams, size)
	return nil
}

func health(transport, server string, p pki) error {
	hdr, _ := header("0.1.0", "", "", flagClose)
	c, err := dialTunnel(transport, server, p, hdr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 16))
	if n == 0 && err == io.EOF {
		fmt.Println("ok healthy")
		return nil
	}
	if err == nil {
		return errors.New("server answered with data")
	}
	return err
}

func echo(tcpAddr, udpAddr string) {
	if tcpAddr != "" {
		ln, err := net.Listen("tcp", tcpAddr)
		must(err)
		fmt.Printf("echo tcp=%s\n", ln.Addr())
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					io.Copy(c, c)
					c.(*net.TCPConn).CloseWrite()
					c.Close()
				}()
			}
		}()
	}
	if udpAddr != "" {
		pc, err := net.ListenPacket("udp", udpAddr)
		must(err)
		fmt.Printf("echo udp=%s\n", pc.LocalAddr())
		go func() {
			b := make([]byte, 65535)
			for {
				n, a, err := pc.ReadFrom(b)
				if err != nil {
					return
				}
				pc.WriteTo(b[:n], a)
			}
		}()
	}
	select {}
}

// forward is the client side of a tunnel as the original uses it: a local TCP listener whose
// connections are each relayed through their own TLS tunnel with io.Copy, or a local UDP socket
// whose source addresses each get their own DTLS session.
func forward(transport, listen, server, target, version string, p pki) {
	host, port, err := net.SplitHostPort(target)
	must(err)
	hdr, err := header(version, host, port, 0)
	must(err)
	if transport == "tcp" {
		ln, err := net.Listen("tcp", listen)
		must(err)
		fmt.Printf("forwarding tcp=%s\n", ln.Addr())
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go forwardTCP(c, server, p, hdr)
		}
	}
	pc, err := net.ListenPacket("udp", listen)
	must(err)
	fmt.Printf("forwarding udp=%s\n", pc.LocalAddr())
	var mu sync.Mutex
	sessions := map[string]chan []byte{}
	buf := make([]byte, 65535)
	for {
		n, src, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		key := src.String()
		mu.Lock()
		queue, ok := sessions[key]
		if !ok {
			queue = make(chan []byte, 64)
			sessions[key] = queue
			go forwardUDP(pc, src, queue, server, p, hdr, func() {
				mu.Lock()
				delete(sessions, key)
				mu.Unlock()
			})
		}
		mu.Unlock()
		d := make([]byte, n)
		copy(d, buf[:n])
		select {
		case queue <- d:
		default: // the session is behind: drop, as a router would
		}
	}
}

func forwardTCP(c net.Conn, server string, p pki, hdr []byte) {
	defer c.Close()
	t, err := dialTunnel("tcp", server, p, hdr)
	if err != nil {
		return
	}
	defer t.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.Copy(t, c)
		t.(*tls.Conn).CloseWrite()
	}()
	go func() {
		defer wg.Done()
		io.Copy(c, t)
		c.(*net.TCPConn).CloseWrite()
	}()
	wg.Wait()
}

func forwardUDP(pc net.PacketConn, src net.Addr, queue chan []byte, server string, p pki, hdr []byte, done func()) {
	defer done()
	t, err := dialTunnel("udp", server, p, hdr)
	if err != nil {
		return
	}
	defer t.Close()
	go func() {
		b := make([]byte, 65535)
		for {
			t.SetReadDeadline(time.Now().Add(60 * time.Second))
			n, err := t.Read(b)
			if err != nil {
				t.Close()
				return
			}
			pc.WriteTo(b[:n], src)
		}
	}()
	for d := range queue {
		if _, err := t.Write(d); err != nil {
			return
		}
	}
}

func must(err error) {
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "goPeer:", msg)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: goPeer server|check|health|echo|header|forward|relay [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "server address")
	server := fs.String("server", "", "server address")
	ca := fs.String("ca", "", "CA file")
	cert := fs.String("cert", "", "certificate file")
	key := fs.String("key", "", "key file")
	transport := fs.String("transport", "tcp", "tcp or udp")
	target := fs.String("target", "", "destination host:port")
	version := fs.String("version", "0.1.0.0", "header version")
	nbytes := fs.Int("bytes", 1<<20, "TCP bytes to send")
	datagrams := fs.Int("datagrams", 1000, "UDP datagrams to send")
	size := fs.Int("size", 1200, "UDP datagram size")
	tcpEcho := fs.String("tcp", "", "TCP echo address")
	udpEcho := fs.String("udp", "", "UDP echo address")
	host := fs.String("host", "", "header host")
	port := fs.String("port", "", "header port")
	healthFlag := fs.Bool("health", false, "health-check header")
	noCert := fs.Bool("nocert", false, "client: present no certificate")
	fs.StringVar(&acceptOnly, "accept-only", "", "server: accept only this header version")
	fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "server":
		serve(*listen, loadPKI(*ca, *cert, *key))
	case "check":
		p := loadPKI(*ca, *cert, *key)
		if *noCert {
			p = p.withoutCert()
		}
		must(check(*transport, *server, *target, *version, *nbytes, *datagrams, *size, p))
	case "health":
		must(health(*transport, *server, loadPKI(*ca, *cert, *key)))
	case "echo":
		echo(*tcpEcho, *udpEcho)
	case "header":
		var flags byte
		if *healthFlag {
			flags = flagClose
		}
		b, err := header(*version, *host, *port, flags)
		must(err)
		fmt.Println(hex.EncodeToString(b))
	case "relay":
		relay(*listen, *target)
	case "forward":
		forward(*transport, *listen, *server, *target, *version, loadPKI(*ca, *cert, *key))
	default:
		fail("unknown role " + strconv.Quote(os.Args[1]))
	}
}
