"""Call the app with the official `openai` client: completion and chat, plain and streaming.

    python examples/openai_client.py [--base-url http://127.0.0.1:8000/v1]
"""

import argparse

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused")
    model = client.models.list().data[0].id

    done = client.completions.create(model=model, prompt="The capital of France is", max_tokens=16)
    print("completion:", repr(done.choices[0].text), done.usage)

    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
    )
    print("chat:", repr(chat.choices[0].message.content), chat.usage)

    # ignore_eos is a vLLM extension: it forces exactly max_tokens output tokens.
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count to ten."}],
        max_tokens=32,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    text = ""
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            print("streamed chat:", repr(text), chunk.usage)


if __name__ == "__main__":
    main()
