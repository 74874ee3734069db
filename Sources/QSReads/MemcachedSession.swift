import Foundation
import Logging
import NIOCore
import QSModel
import QSNet
import QSStore

/// Serves one memcached connection: commands are answered in order; store reads run on the
/// store's reader threads, replies are written with back-pressure, `get` keys are read in chunks, so
/// a connection holds at most one chunk of values at a time.
struct MemcachedSession: Sendable {
    let config: MemcachedServer.Configuration
    let store: Store
    let metrics: ReadMetrics
    let logger: Logger
    let stats: MemcachedStats

    static let keysPerRead = 32
    static let readOnlyReply = "SERVER_ERROR read-only: write through the QS root\r\n"

    func run(_ connection: NIOAsyncChannel<MemcachedCommand, ByteBuffer>, peer: String, drain: RequestDrain?) async {
        metrics.opened()
        defer { metrics.closed() }
        do {
            try await connection.executeThenClose { inbound, outbound in
                for try await command in inbound {
                    // In flight until answered: graceful shutdown closes the connection after it.
                    drain?.begin()
                    defer { drain?.end() }
                    guard try await handle(command, outbound: outbound, peer: peer) else { return }
                }
            }
        } catch {
            logger.debug("memcached connection ended with an error", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
    }

    /// Answers one command; false when the connection is to be closed.
    private func handle(_ command: MemcachedCommand, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
                        peer: String) async throws -> Bool {
        switch command {
        case let .get(keys, withCAS):
            metrics.requests(withCAS ? "gets" : "get").increment()
            try await get(keys, withCAS: withCAS, outbound: outbound, peer: peer)
        case .version:
            metrics.requests("version").increment()
            try await outbound.write(ByteBuffer(string: "VERSION \(config.version)\r\n"))
        case .stats:
            metrics.requests("stats").increment()
            try await outbound.write(ByteBuffer(string: stats.render(version: config.version, connections: metrics.active.count)))
        case .quit:
            metrics.requests("quit").increment()
            return false
        case let .write(name, noreply):
            metrics.requests("write").increment()
            metrics.refusedWrite(logger, peer: peer, write: noreply ? "\(name) noreply" : name)
            if !noreply { try await outbound.write(ByteBuffer(string: Self.readOnlyReply)) }
        case let .malformed(reply, reason, close):
            metrics.requests("bad").increment()
            metrics.bad(logger, peer: peer, reason: reason, ["reply": "\(reply)"])
            try await outbound.write(ByteBuffer(string: reply + "\r\n"))
            return !close
        }
        return true
    }

    private func get(_ keys: [[UInt8]], withCAS: Bool, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
                     peer: String) async throws {
        let store = self.store, config = self.config
        guard let db = config.databases.database(index: config.database) else {
            try await outbound.write(ByteBuffer(string: "SERVER_ERROR no such database\r\n"))
            return
        }
        var start = 0
        while start < keys.count {
            let chunk = Array(keys[start..<min(start + Self.keysPerRead, keys.count)])
            start += chunk.count
            let now = config.clock()
            let records: [Record?]
            do {
                records = try await store.read { txn in
                    try chunk.map { key -> Record? in
                        let full = db.prefix + key
                        guard config.databases.owns(db, key: full), let r = try txn.get(full),
                              !r.isExpired(at: now) else { return nil }
                        return r
                    }
                }
            } catch {
                logger.error("memcached get failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
                try await outbound.write(ByteBuffer(string: "SERVER_ERROR storage error\r\n"))
                return
            }
            var out = ByteBuffer()
            for (key, record) in zip(chunk, records) {
                guard let record else {
                    metrics.misses.increment()
                    stats.count(hit: false)
                    continue
                }
                metrics.hits.increment()
                stats.count(hit: true)
                let (flags, data) = config.valueFormat.split(record.value)
                out.writeString("VALUE ")
                out.writeBytes(key)
                out.writeString(" \(flags) \(data.count)")
                if withCAS { out.writeString(" \(MemcachedValueFormat.casUnique(value: record.value, expiry: record.expiry))") }
                out.writeString("\r\n")
                out.writeBytes(data)
                out.writeString("\r\n")
            }
            if out.readableBytes > 0 { try await outbound.write(out) }
        }
        try await outbound.write(ByteBuffer(string: "END\r\n"))
    }
}
