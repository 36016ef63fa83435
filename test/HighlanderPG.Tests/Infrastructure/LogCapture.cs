using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.Tests.Infrastructure;

/// <summary>Captures every log entry of every node, to assert on event ids and that no password is logged.</summary>
public sealed class LogCapture
{
    private readonly ConcurrentQueue<LogEntry> _entries = new();
    private readonly List<(Func<LogEntry, bool> Match, TaskCompletionSource<LogEntry> Done)> _waiters = [];
    private readonly Lock _gate = new();

    public IReadOnlyList<LogEntry> Entries => [.. _entries];

    public ILoggerProvider For(string node) => new Provider(this, node);

    /// <summary>Every entry at <paramref name="minimum"/> or above, one per line with its time and node, for failure messages.</summary>
    public string Describe(LogLevel minimum = LogLevel.Information) => string.Join("\n", Entries
        .Where(e => e.Level >= minimum)
        .Select(e => $"{e.At:HH:mm:ss.fff} {e.Node} {e.Level} {e.EventId.Id} {e.Category}: {e.Message}{(e.Exception is null ? "" : $" ({e.Exception.GetType().Name}: {e.Exception.Message})")}"));

    public Task<LogEntry> WaitAsync(Func<LogEntry, bool> match, TimeSpan? timeout = null)
    {
        var tcs = new TaskCompletionSource<LogEntry>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            var existing = _entries.FirstOrDefault(match);
            if (existing is not null)
            {
                return Task.FromResult(existing);
            }

            _waiters.Add((match, tcs));
        }

        return tcs.Task.WaitAsync(timeout ?? TimeSpan.FromSeconds(60));
    }

    private void Add(LogEntry entry)
    {
        List<TaskCompletionSource<LogEntry>> done = [];
        lock (_gate)
        {
            _entries.Enqueue(entry);
            for (var i = _waiters.Count - 1; i >= 0; i--)
            {
                if (_waiters[i].Match(entry))
                {
                    done.Add(_waiters[i].Done);
                    _waiters.RemoveAt(i);
                }
            }
        }

        foreach (var d in done)
        {
            d.TrySetResult(entry);
        }
    }

    public sealed record LogEntry(string Node, string Category, LogLevel Level, EventId EventId, string Message, Exception? Exception)
    {
        /// <summary>When it was logged (<see cref="System.Diagnostics.Stopwatch"/> timestamp), to order entries against a fault.</summary>
        public long Timestamp { get; } = System.Diagnostics.Stopwatch.GetTimestamp();

        /// <summary>When it was logged (wall clock, as the journal's events), for failure messages.</summary>
        public DateTimeOffset At { get; } = DateTimeOffset.UtcNow;
    }

    private sealed class Provider(LogCapture capture, string node) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new Logger(capture, node, categoryName);

        public void Dispose()
        {
        }
    }

    private sealed class Logger(LogCapture capture, string node, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            capture.Add(new LogEntry(node, category, logLevel, eventId, formatter(state, exception), exception));
    }
}
