using System.Diagnostics;
using System.Text;

namespace HighlanderPG.Testing;

/// <summary>The outcome of one child process run.</summary>
internal sealed record ChildProcessResult(string CommandLine, int ExitCode, string Output);

/// <summary>
/// Runs short-lived helper programs (initdb, pg_ctl, chown, ...) with their output captured.
/// </summary>
internal static class ChildProcess
{
    /// <summary>Runs a program to completion; never throws for a non-zero exit code.</summary>
    /// <exception cref="InvalidOperationException">The program could not be started or timed out.</exception>
    public static async Task<ChildProcessResult> RunAsync(
        string fileName,
        IReadOnlyList<string> arguments,
        string? workingDirectory,
        TimeSpan timeout,
        CancellationToken cancellationToken)
    {
        var output = new StringBuilder();
        using var process = CreateProcess(fileName, arguments, workingDirectory, output);
        var commandLine = FormatCommandLine(fileName, arguments);
        Start(process, commandLine);

        using var timeoutSource = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeoutSource.CancelAfter(timeout);
        try
        {
            // Also waits for the end of the redirected output streams.
            await process.WaitForExitAsync(timeoutSource.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            Kill(process);
            cancellationToken.ThrowIfCancellationRequested();
            throw new InvalidOperationException(
                $"Command timed out after {timeout.TotalSeconds:0} s: {commandLine}{Environment.NewLine}{Tail(Snapshot(output), 30)}");
        }

        return new ChildProcessResult(commandLine, process.ExitCode, Snapshot(output));
    }

    /// <summary>Synchronous variant for contexts that cannot await (process exit handlers).</summary>
    public static ChildProcessResult? RunBlocking(
        string fileName, IReadOnlyList<string> arguments, string? workingDirectory, TimeSpan timeout)
    {
        var output = new StringBuilder();
        using var process = CreateProcess(fileName, arguments, workingDirectory, output);
        var commandLine = FormatCommandLine(fileName, arguments);
        try
        {
            Start(process, commandLine);
        }
        catch (InvalidOperationException)
        {
            return null;
        }

        if (!process.WaitForExit(timeout))
        {
            Kill(process);
            return null;
        }

        process.WaitForExit(); // flush the asynchronous output handlers
        return new ChildProcessResult(commandLine, process.ExitCode, Snapshot(output));
    }

    /// <summary>Returns the last <paramref name="lines"/> lines of <paramref name="text"/>.</summary>
    public static string Tail(string text, int lines)
    {
        var all = text.Split('\n', StringSplitOptions.None);
        var count = all.Length;
        if (count > 0 && all[^1].Length == 0)
        {
            count--;
        }

        var start = Math.Max(0, count - lines);
        return string.Join('\n', all, start, count - start);
    }

    /// <summary>Quotes an argument for display (not for a shell).</summary>
    public static string FormatCommandLine(string fileName, IReadOnlyList<string> arguments)
    {
        var builder = new StringBuilder(Quote(fileName));
        foreach (var argument in arguments)
        {
            builder.Append(' ').Append(Quote(argument));
        }

        return builder.ToString();

        static string Quote(string value) =>
            value.Length > 0 && value.AsSpan().IndexOfAny(" \t\"'\\$") < 0 ? value : "'" + value.Replace("'", "'\\''", StringComparison.Ordinal) + "'";
    }

    private static Process CreateProcess(
        string fileName, IReadOnlyList<string> arguments, string? workingDirectory, StringBuilder output)
    {
        var startInfo = new ProcessStartInfo(fileName)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            CreateNoWindow = true,
        };
        if (workingDirectory is not null)
        {
            // The child may run as another user who cannot read the caller's directory.
            startInfo.WorkingDirectory = workingDirectory;
        }

        foreach (var argument in arguments)
        {
            startInfo.ArgumentList.Add(argument);
        }

        // Inherited libpq variables (PGPORT, PGHOST, PGDATA, PGOPTIONS, ...) must not leak
        // into the throwaway server's tools; messages in C locale keep errors greppable.
        foreach (var name in startInfo.Environment.Keys.Where(k => k.StartsWith("PG", StringComparison.Ordinal)).ToList())
        {
            startInfo.Environment.Remove(name);
        }

        startInfo.Environment["LC_ALL"] = "C";

        var process = new Process { StartInfo = startInfo };
        DataReceivedEventHandler append = (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (output)
                {
                    output.Append(e.Data).Append('\n');
                }
            }
        };
        process.OutputDataReceived += append;
        process.ErrorDataReceived += append;
        return process;
    }

    private static void Start(Process process, string commandLine)
    {
        try
        {
            process.Start();
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            throw new InvalidOperationException($"Could not start '{commandLine}': {ex.Message}", ex);
        }

        process.StandardInput.Close();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    private static void Kill(Process process)
    {
        try
        {
            process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // Already exited.
        }
        catch (System.ComponentModel.Win32Exception)
        {
            // Best effort.
        }
    }

    private static string Snapshot(StringBuilder output)
    {
        lock (output)
        {
            return output.ToString();
        }
    }
}
