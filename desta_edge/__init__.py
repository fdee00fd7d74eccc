"""desta-edge: DeSTA2.5-Audio as a real-time, on-device spoken-query assistant.

    from desta_edge import DestaModel
    model = DestaModel.from_pretrained("tiny")
    out = model.generate([{"role": "user", "content": "<|AUDIO|>\nAnswer the question.",
                           "audios": [{"audio": "question.wav", "text": None}]}])
    print(out.text[0])
"""

from desta_edge.runtime.audio import Audio, AudioError, decode_audio, load_audio, prepare_audio
from desta_edge.runtime.config import DestaConfig
from desta_edge.runtime.model import AnswerStream, DestaModel, GenerationOutput

DeSTA25AudioModel = DestaModel  # the seed's name

__all__ = [
    "AnswerStream",
    "Audio",
    "AudioError",
    "DeSTA25AudioModel",
    "DestaConfig",
    "DestaModel",
    "GenerationOutput",
    "decode_audio",
    "load_audio",
    "prepare_audio",
]
__version__ = "0.1.0"
