"""Another Ray Serve app calling Aladdin through a DeploymentHandle (no HTTP in between).

With the Aladdin app running (e.g. `serve run examples/serve_local_cpu.yaml`):

    serve run examples.handle_client:app --name summarizer --route-prefix /summarize
    curl -s localhost:8000/summarize -d 'Ray Serve is a scalable model serving library.'
"""

from ray import serve
from starlette.requests import Request


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Summarizer:
    def __init__(self, aladdin_app: str = "aladdin") -> None:
        self._llm = serve.get_app_handle(aladdin_app)

    async def __call__(self, request: Request) -> dict:
        text = (await request.body()).decode()
        # vLLM's request models (or the same fields as POST /v1/completions, as a dict) in, vLLM's
        # response models out; errors arrive as serve_app.http.errors.OpenAIError.
        response = await self._llm.create_completion.remote(
            {"prompt": f"Summarize: {text}\nSummary:", "max_tokens": 24}
        )
        chunks = []
        async for chunk in self._llm.options(stream=True).stream_completion.remote(
            {"prompt": text, "max_tokens": 8}
        ):
            chunks.append(chunk.choices[0].text if chunk.choices else "")
        return {
            "summary": response.choices[0].text,
            "usage": response.usage.model_dump(),
            "worker": response.aladdin["worker"],
            "streamed_chunks": len(chunks),
        }


app = Summarizer.bind()
