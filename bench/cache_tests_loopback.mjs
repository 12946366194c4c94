// Preloaded (node --import) into the http-cache-tests origin server by bench/cache_conformance.py.
// The suite's server calls server.listen(port), which listens on every interface; this makes any
// listen() without an explicit host listen on 127.0.0.1 only, so the origin stays on loopback.
import net from 'node:net'

const originalListen = net.Server.prototype.listen

net.Server.prototype.listen = function listenOnLoopback (...args) {
  const portOnly = (typeof args[0] === 'number' || typeof args[0] === 'string') &&
    (args.length === 1 || typeof args[1] === 'function')
  if (portOnly) args.splice(1, 0, '127.0.0.1')
  return originalListen.apply(this, args)
}
