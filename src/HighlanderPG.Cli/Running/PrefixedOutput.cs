using System.Text;

namespace HighlanderPG.Cli.Running;

/// <summary>
/// Copies a member's output to <c>highlander</c>'s own, each line prefixed with the member's name like foreman does
/// (<c>web    | listening on 8080</c>): its standard output to standard output, its standard error to standard error.
/// Bytes are copied as they are (no re-encoding); a line is written whole, so members' lines never interleave mid-line.
/// </summary>
internal static class PrefixedOutput
{
    /// <summary>A longer line is written in pieces of this size, each prefixed.</summary>
    private const int MaxLine = 64 * 1024;

    private static readonly Lock StdoutGate = new();
    private static readonly Lock StderrGate = new();
    private static readonly Lazy<Stream> Stdout = new(Console.OpenStandardOutput);
    private static readonly Lazy<Stream> Stderr = new(Console.OpenStandardError);

    /// <summary>The prefix of <paramref name="member"/>'s lines, its name padded to <paramref name="width"/>.</summary>
    public static byte[] Prefix(string member, int width) => Encoding.UTF8.GetBytes(member.PadRight(width) + " | ");

    /// <summary>Copies <paramref name="source"/> line by line until its end (every writer closed it), or a write fails.</summary>
    public static Task PumpAsync(Stream source, byte[] prefix, bool toStderr) => Task.Run(async () =>
    {
        var gate = toStderr ? StderrGate : StdoutGate;
        var target = toStderr ? Stderr : Stdout;
        var buffer = new byte[8192];
        using var line = new MemoryStream();
        try
        {
            int read;
            while ((read = await source.ReadAsync(buffer).ConfigureAwait(false)) > 0)
            {
                var start = 0;
                for (var i = 0; i < read; i++)
                {
                    if (buffer[i] == (byte)'\n')
                    {
                        line.Write(buffer, start, i - start);
                        Emit(gate, target.Value, prefix, line);
                        start = i + 1;
                    }
                    else if (line.Length + (i + 1 - start) >= MaxLine)
                    {
                        line.Write(buffer, start, i + 1 - start);
                        Emit(gate, target.Value, prefix, line);
                        start = i + 1;
                    }
                }

                line.Write(buffer, start, read - start);
            }

            if (line.Length > 0)
            {
                Emit(gate, target.Value, prefix, line);
            }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            // The member's pipe went away: nothing more to copy.
        }
    });

    private static void Emit(Lock gate, Stream target, byte[] prefix, MemoryStream line)
    {
        var bytes = new byte[prefix.Length + line.Length + 1];
        prefix.CopyTo(bytes, 0);
        line.GetBuffer().AsSpan(0, (int)line.Length).CopyTo(bytes.AsSpan(prefix.Length));
        bytes[^1] = (byte)'\n';
        line.SetLength(0);
        lock (gate)
        {
            try
            {
                target.Write(bytes);
                target.Flush();
            }
            catch (IOException)
            {
                // Our own output is gone (a closed pipe): the line is lost, but the member's pipe keeps being drained, so
                // that a member writing its output never blocks on a full pipe because of it.
            }
        }
    }
}
