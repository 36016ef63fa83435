using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace HighlanderPG.FaultRun;

/// <summary>
/// One line of the history: <c>mono kind singleton host node pid epoch detail</c>, separated by single spaces, "-" for
/// nothing. <c>mono</c> is <see cref="Stopwatch.GetTimestamp"/> (CLOCK_MONOTONIC on Linux, one clock for every process of
/// the machine), in nanoseconds.
/// </summary>
internal sealed record HistoryEvent(long Mono, string Kind, string Singleton, string Host, string Node, int Pid, long Epoch, string Detail, string File)
{
    public static bool TryParse(string line, string file, out HistoryEvent? e)
    {
        e = null;
        var f = line.Split(' ');
        if (f.Length < 8 || !long.TryParse(f[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out var mono)
            || !int.TryParse(f[5], NumberStyles.Integer, CultureInfo.InvariantCulture, out var pid))
        {
            return false;
        }

        var epoch = long.TryParse(f[6], NumberStyles.Integer, CultureInfo.InvariantCulture, out var ep) ? ep : 0;
        e = new HistoryEvent(mono, f[1], f[2], f[3], f[4], pid, epoch, string.Join(' ', f.Skip(7)), file);
        return true;
    }
}

/// <summary>The monotonic clock shared by every process of the run.</summary>
internal static class Mono
{
    private static readonly double NanosPerTick = 1e9 / Stopwatch.Frequency;

    public static long Now() => (long)(Stopwatch.GetTimestamp() * NanosPerTick);

    public static long FromSeconds(double s) => (long)(s * 1e9);

    public static double Seconds(long nanos) => nanos / 1e9;
}

/// <summary>A per-process append-only history file: each line is written with one write(2) (O_APPEND) and flushed.</summary>
internal sealed class HistoryWriter : IDisposable
{
    private readonly Lock _gate = new();
    private readonly FileStream _stream;
    private readonly string _host;
    private readonly string _node;
    private readonly int _pid = Environment.ProcessId;

    public HistoryWriter(string directory, string role, string host, string node)
    {
        Directory.CreateDirectory(directory);
        _host = host;
        _node = node;
        var path = Path.Combine(directory, string.Create(CultureInfo.InvariantCulture, $"{role}-{host}-{_pid}.log"));
        _stream = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete, 1, FileOptions.None);
    }

    public string Host => _host;

    public string Node => _node;

    public void Write(string kind, string? singleton = null, long? epoch = null, string? detail = null, long? mono = null)
    {
        var line = string.Create(CultureInfo.InvariantCulture,
            $"{mono ?? Mono.Now()} {kind} {Token(singleton)} {_host} {_node} {_pid} {(epoch is { } e ? e.ToString(CultureInfo.InvariantCulture) : "-")} {Token(detail)}\n");
        var bytes = Encoding.UTF8.GetBytes(line);
        lock (_gate)
        {
            try
            {
                _stream.Write(bytes);
                _stream.Flush();
            }
            catch (IOException)
            {
                // A full disk must not end a node: the checker sees the gap.
            }
        }
    }

    private static string Token(string? s) => string.IsNullOrEmpty(s) ? "-" : s.Replace(' ', '_');

    public void Dispose() => _stream.Dispose();
}

/// <summary>Reads every history file of a directory, incrementally (complete lines only).</summary>
internal sealed class HistoryTail(string directory)
{
    private readonly Dictionary<string, (long Offset, string Tail)> _files = new(StringComparer.Ordinal);
    private readonly HashSet<string> _done = new(StringComparer.Ordinal);

    /// <summary>When set, a file whose process has ended is read once more and then never again.</summary>
    public bool SkipEnded { get; init; }

    public List<HistoryEvent> ReadNew()
    {
        var result = new List<HistoryEvent>();
        if (!Directory.Exists(directory))
        {
            return result;
        }

        foreach (var path in Directory.GetFiles(directory, "*.log"))
        {
            if (_done.Contains(path))
            {
                // A process that ended writes no more, but its pid may be reused by a new process of the same role and
                // host, which appends to the same file: read on if it grew.
                if (new FileInfo(path).Length <= _files.GetValueOrDefault(path).Offset)
                {
                    continue;
                }

                _done.Remove(path);
            }

            if (SkipEnded && int.TryParse(Path.GetFileNameWithoutExtension(path).Split('-')[^1], NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && !Native.Alive(pid))
            {
                // Checked before this last read: whatever it wrote before it ended is read now.
                _done.Add(path);
            }

            _files.TryGetValue(path, out var state);
            try
            {
                using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
                if (fs.Length <= state.Offset)
                {
                    continue;
                }

                fs.Seek(state.Offset, SeekOrigin.Begin);
                var buffer = new byte[fs.Length - state.Offset];
                var read = fs.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
                var text = state.Tail + Encoding.UTF8.GetString(buffer, 0, read);
                var last = text.LastIndexOf('\n');
                var complete = last < 0 ? "" : text[..last];
                var rest = last < 0 ? text : text[(last + 1)..];
                _files[path] = (state.Offset + read, rest);
                var name = Path.GetFileName(path);
                foreach (var line in complete.Split('\n', StringSplitOptions.RemoveEmptyEntries))
                {
                    if (HistoryEvent.TryParse(line, name, out var e))
                    {
                        result.Add(e!);
                    }
                }
            }
            catch (IOException)
            {
                // Read it next time.
            }
        }

        return result;
    }
}
