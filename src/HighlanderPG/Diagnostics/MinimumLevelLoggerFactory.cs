using Microsoft.Extensions.Logging;

namespace HighlanderPG.Diagnostics;

/// <summary>
/// Npgsql's logging for HighlanderPG's own dedicated sessions, from <see cref="LogLevel.Warning"/> up only: at
/// Information Npgsql logs every statement and every wait for a result, which for a node is a line per heartbeat and
/// per wait slice, several a second, none of them the application's. Its warnings and errors (a broken connection, a
/// failed login) still reach the application's logging, under Npgsql's own categories.
/// </summary>
internal sealed class MinimumLevelLoggerFactory(ILoggerFactory inner, LogLevel minimum) : ILoggerFactory
{
    public ILogger CreateLogger(string categoryName) => new Filtered(inner.CreateLogger(categoryName), minimum);

    public void AddProvider(ILoggerProvider provider) => inner.AddProvider(provider);

    public void Dispose()
    {
        // The application's factory is not this one's to dispose.
    }

    private sealed class Filtered(ILogger logger, LogLevel minimum) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => logger.BeginScope(state);

        public bool IsEnabled(LogLevel logLevel) => logLevel >= minimum && logger.IsEnabled(logLevel);

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel))
            {
                logger.Log(logLevel, eventId, state, exception, formatter);
            }
        }
    }
}
