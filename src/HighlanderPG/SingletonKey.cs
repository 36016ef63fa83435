using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace HighlanderPG;

/// <summary>
/// Derives a singleton's 64-bit advisory lock key from its namespace and name.
/// </summary>
/// <remarks>
/// The key is the first 8 bytes, read as a big-endian signed integer, of
/// <c>SHA-256(UTF-8(namespace) ‖ 0x00 ‖ UTF-8(name))</c>. It is stable across versions, processes and
/// platforms, so any tool can compute it. In SQL:
/// <code>SELECT ('x' || left(encode(sha256(convert_to('highlander' || chr(0) || 'reports', 'UTF8')), 'hex'), 16))::bit(64)::bigint;</code>
/// (<c>chr(0)</c> is not allowed in PostgreSQL text; use
/// <c>sha256(convert_to('highlander', 'UTF8') || '\x00'::bytea || convert_to('reports', 'UTF8'))</c>.)
/// </remarks>
public static class SingletonKey
{
    /// <summary>The key of <paramref name="name"/> in <paramref name="namespace"/>.</summary>
    /// <param name="namespace">The namespace (<see cref="HighlanderOptions.Namespace"/>).</param>
    /// <param name="name">The singleton's name.</param>
    public static long Derive(string @namespace, string name)
    {
        ArgumentNullException.ThrowIfNull(@namespace);
        ArgumentNullException.ThrowIfNull(name);
        var ns = Encoding.UTF8.GetBytes(@namespace);
        var n = Encoding.UTF8.GetBytes(name);
        var input = new byte[ns.Length + 1 + n.Length];
        ns.CopyTo(input, 0);
        n.CopyTo(input, ns.Length + 1);
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(input, hash);
        return BinaryPrimitives.ReadInt64BigEndian(hash);
    }
}
