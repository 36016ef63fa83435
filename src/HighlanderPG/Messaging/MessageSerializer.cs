using System.Text.Json;

namespace HighlanderPG.Messaging;

/// <summary>
/// Turns message payloads and replies into JSON and back (they are stored as <c>jsonb</c>). The default is
/// <see cref="SystemTextJsonMessageSerializer"/>; plug in another through the messaging options or the client's.
/// </summary>
public interface IMessageSerializer
{
    /// <summary>The JSON text of <paramref name="value"/>, serialized as <paramref name="type"/>. Throw for a type you refuse.</summary>
    /// <param name="value">The value.</param>
    /// <param name="type">Its declared type.</param>
    string Serialize(object? value, Type type);

    /// <summary>The value of type <paramref name="type"/> read from <paramref name="json"/>.</summary>
    /// <param name="json">JSON text.</param>
    /// <param name="type">The type to read.</param>
    object? Deserialize(string json, Type type);
}

/// <summary>The default serializer: System.Text.Json, with the web defaults (camelCase) unless options are given.</summary>
/// <param name="options">The serializer's options; <see langword="null"/> for <see cref="JsonSerializerDefaults.Web"/>.</param>
public sealed class SystemTextJsonMessageSerializer(JsonSerializerOptions? options = null) : IMessageSerializer
{
    private readonly JsonSerializerOptions _options = options ?? new JsonSerializerOptions(JsonSerializerDefaults.Web);

    /// <summary>A shared instance with the web defaults.</summary>
    public static SystemTextJsonMessageSerializer Default { get; } = new();

    /// <inheritdoc/>
    public string Serialize(object? value, Type type) => JsonSerializer.Serialize(value, type, _options);

    /// <inheritdoc/>
    public object? Deserialize(string json, Type type) => JsonSerializer.Deserialize(json, type, _options);
}

internal static class Serialization
{
    public static string ToJson<T>(IMessageSerializer serializer, T value)
    {
        try
        {
            return serializer.Serialize(value, typeof(T));
        }
        catch (Exception ex) when (ex is NotSupportedException or JsonException or InvalidOperationException or ArgumentException)
        {
            throw new MessagingException(MessagingError.NotSerializable,
                $"The serializer ({serializer.GetType().Name}) refused a value of type {typeof(T)}: {ex.Message} Send a plain data type (records, classes with public properties, collections, primitives) or configure the serializer.", ex);
        }
    }

    public static T FromJson<T>(IMessageSerializer serializer, string json)
    {
        try
        {
            return (T)serializer.Deserialize(json, typeof(T))!;
        }
        catch (Exception ex) when (ex is NotSupportedException or JsonException or InvalidCastException or ArgumentException)
        {
            throw new MessagingException(MessagingError.NotSerializable,
                $"The serializer ({serializer.GetType().Name}) cannot read this JSON as {typeof(T)}: {ex.Message}", ex);
        }
    }
}
