package main

import (
	"fmt"
	"net"
	"net/netip"
)

// relay is a plain UDP relay without a tunnel: no header, no DTLS. Every source address gets
// its own socket connected to the target, as a forwarder's session does, and a goroutine that
// sends the target's answers back. Two of them in a row are the shape of a tunnel (client side,
// server side) with the crypto taken out: the ceiling of that topology in the benchmarks.
func relay(listen, target string) {
	dst, err := net.ResolveUDPAddr("udp", target)
	must(err)
	la, err := net.ResolveUDPAddr("udp", listen)
	must(err)
	pc, err := net.ListenUDP("udp", la)
	must(err)
	bigBuffers(pc)
	fmt.Printf("relaying udp=%s\n", pc.LocalAddr())
	sessions := map[netip.AddrPort]*net.UDPConn{}
	buf := make([]byte, 65535)
	for {
		n, src, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		c, ok := sessions[src]
		if !ok {
			c, err = net.DialUDP("udp", nil, dst)
			if err != nil {
				continue
			}
			bigBuffers(c)
			sessions[src] = c
			go func(c *net.UDPConn, src netip.AddrPort) {
				b := make([]byte, 65535)
				for {
					n, err := c.Read(b)
					if err != nil {
						return
					}
					pc.WriteToUDPAddrPort(b[:n], src)
				}
			}(c, src)
		}
		c.Write(buf[:n])
	}
}

// bigBuffers asks for 4 MiB socket buffers, as the tunnels' data sockets do.
func bigBuffers(c *net.UDPConn) {
	c.SetReadBuffer(4 << 20)
	c.SetWriteBuffer(4 << 20)
}
