import QSClient
import QSFeed
import QSNet
import QSWire

/// Connections to the first writable root of a list (`--root A,B,…`): each address is
/// tried in order and a node that answers hello with "not writable" (a replica, a demoted
/// root) is passed over, so after a cutover qsrest writes to the promoted root without a
/// restart. Compare-and-swap on qsrest's position makes a batch sent to two roots apply
/// at most once where their checkpoints are shared (a mirror carries them).
public enum RootList {
    public static func connect(_ endpoints: [Endpoint], token: [UInt8]) -> @Sendable () async throws -> any RootConnection {
        {
            var last: (any Error)?
            for endpoint in endpoints {
                do {
                    let client: QSClient
                    switch endpoint {
                    case let .tcp(host, port): client = try await QSClient.connect(host: host, port: port, token: token)
                    case let .unix(path): client = try await QSClient.connect(unixPath: path, token: token)
                    }
                    if endpoints.count > 1,
                       case let .error(code, message) = try await client.send(.hello(token: token, client: "qsrest probe"), timeout: .seconds(5)),
                       ErrorCode(rawValue: code) == .notWritable {
                        await client.close()
                        last = ClientError.server(code: code, message: "\(endpoint): \(message)")
                        continue
                    }
                    return client
                } catch {
                    last = error
                }
            }
            throw last ?? ClientError.unexpected("no root address given")
        }
    }
}
